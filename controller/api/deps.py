"""Dependencies of the routes, as `Annotated` aliases so signatures read as prose: `ControllerDep`, `SessionDep`
(one transaction per request, committed before the response is sent) and the token scopes `ReadToken`,
`PlanToken`, `AdminToken`.

Every sync dependency costs a trip to a worker thread; the ones that need no I/O are async.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from controller.api.errors import forbidden, unauthenticated
from controller.runtime import Controller
from db.models import TOKEN_SCOPES

bearer = HTTPBearer(auto_error=False, description="An API token: `fleetwise token create --name N --scopes read`.")


async def get_controller(request: Request) -> Controller:
    return request.app.state.controller


ControllerDep = Annotated[Controller, Depends(get_controller)]


def get_session(ctl: ControllerDep) -> Iterator[Session]:
    """A session in a transaction that commits when the route returns (before the response is sent) and rolls
    back if it raises: an acknowledged write is a committed one."""
    with ctl.sessions.begin() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


@dataclass(frozen=True)
class Principal:
    """The token a request was made with."""

    name: str
    scopes: tuple[str, ...]


def _requires(scope: str):
    rank = TOKEN_SCOPES.index(scope)

    def check(ctl: ControllerDep,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
        if credentials is None or not credentials.credentials:
            raise unauthenticated("this route needs a bearer token")
        found = ctl.tokens.lookup(credentials.credentials)
        if found is None:
            raise unauthenticated("the bearer token is unknown or revoked")
        name, scopes = found
        if max((TOKEN_SCOPES.index(s) for s in scopes if s in TOKEN_SCOPES), default=-1) < rank:
            raise forbidden(scope, scopes)
        return Principal(name, scopes)

    return check


ReadToken = Annotated[Principal, Depends(_requires("read"))]
PlanToken = Annotated[Principal, Depends(_requires("plan"))]
AdminToken = Annotated[Principal, Depends(_requires("admin"))]
