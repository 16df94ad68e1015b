"""Every verb against every state: allowed (202 + operation), no-op (202, no operation), or
refused (409 naming the current state) — exactly as domain.vm_states says."""

from __future__ import annotations

import asyncio

import pytest

from altostack.db.models_compute import Vm
from altostack.domain import vm_states
from tests.compute.conftest import act, image_id, wait_op

VERBS = ["start", "stop", "reboot", "reinstall", "resize", "reset-password", "restore", "delete"]
ARGS = {
    "resize": {"instance_type": "c1.medium", "allow_restart": True},
    "reset-password": {"password": "Reset-Pass-9"},
}
STATES = ["running", "stopped", "error", "deleted", "starting", "stopping", "deleting", "pending"]


def expected(verb: str, state: str) -> str:
    try:
        return "run" if vm_states.check(verb, state) else "noop"
    except ValueError:
        return "refuse"


async def _vms(client, owner, name):
    body = {
        "name": name,
        "instance_type": "c1.small",
        "image_id": await image_id(client, owner),
        "count": len(VERBS),
    }
    r = await client.post("/v1/vms", json=body, headers=owner)
    await asyncio.gather(*[wait_op(client, owner, op) for op in r.json()["operations"]])
    return r.json()["vms"]


@pytest.mark.parametrize("state", STATES)
async def test_every_verb_in_every_state(client, owner, container, state):
    vms = await _vms(client, owner, f"t-{state}")
    await container.host_monitor.stop()  # no reconciliation may "repair" the states we set
    for _ in range(100):  # and none queued before it stopped is still to run
        busy = [
            op
            for state_ in ("pending", "running")
            for op in (await client.get(f"/v1/operations?state={state_}", headers=owner)).json()[
                "items"
            ]
        ]
        if not busy:
            break
        await asyncio.sleep(0.1)
    async with container.db.uow() as uow:  # put the VMs in the state under test
        for vm in vms:
            (await uow.session.get(Vm, vm["id"])).state = state
        await uow.commit()
    for verb, vm in zip(VERBS, vms, strict=True):
        if verb == "delete":
            r = await client.delete(f"/v1/vms/{vm['id']}", headers=owner)
        else:
            r = await act(client, owner, vm["id"], verb, **ARGS.get(verb, {}))
        outcome = expected(verb, state)
        if outcome == "refuse":
            assert r.status_code == 409, (verb, state, r.text)
            assert r.json()["current_state"] == state and state in r.json()["detail"]
        else:
            assert r.status_code == 202, (verb, state, r.text)
            assert (r.json()["operation"] is None) == (outcome == "noop"), (verb, state)
