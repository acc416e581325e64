"""A host shaped like the reference service: PAM's socket route registers sockets in a manager."""

from __future__ import annotations

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from incident_fsm.demo.pam_simulator import ConnectionManager


def add_pam_socket(app: FastAPI, manager: ConnectionManager) -> None:
    """Mount `/api/v1/pam/ws/{user_id}`; each open socket is in `manager.user_connections`."""

    @app.websocket("/api/v1/pam/ws/{user_id}")
    async def pam_socket(websocket: WebSocket, user_id: str) -> None:
        await websocket.accept()
        manager.connect(websocket, user_id)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            manager.disconnect(websocket, user_id)
