"""The built-in demonstration: a simulated service and the scenarios played against it."""
