"""Topic names in one place. Ids are checked by ``dragon.settings.check_id``."""

from __future__ import annotations

ROOT = "dragon"


def host_sample(lei: str, host: str) -> str:
    return f"{ROOT}/{lei}/hosts/{host}/sample"


def host_samples(lei: str) -> str:
    """Filter for every host sample of an LEI."""
    return f"{ROOT}/{lei}/hosts/+/sample"


def host_health(lei: str, host: str, mode: str = "observed") -> str:
    """The retained verdict of a host: ``.../health`` observed, ``.../health/predicted`` on the forecast."""
    base = f"{ROOT}/{lei}/hosts/{host}/health"
    return base if mode == "observed" else f"{base}/{mode}"


def host_verdicts(lei: str) -> str:
    """Filter for the retained observed verdict of every host of an LEI."""
    return f"{ROOT}/{lei}/hosts/+/health"


def host_forecast(lei: str, host: str) -> str:
    """The co-simulator's forecast of the host's next sample (predicted mode)."""
    return f"{ROOT}/{lei}/hosts/{host}/forecast"


def host_forecasts(lei: str) -> str:
    """Filter for every host forecast of an LEI."""
    return f"{ROOT}/{lei}/hosts/+/forecast"


def fault_event(lei: str, host: str) -> str:
    return f"{ROOT}/faults/{lei}/{host}"


def fault_event_json(lei: str, host: str) -> str:
    """The JSON mirror of :func:`fault_event`, for tools without msgpack."""
    return f"{ROOT}/faults-json/{lei}/{host}"


def all_host_samples() -> str:
    """Filter for every host sample of every LEI this broker sees (its own and bridged ones)."""
    return f"{ROOT}/+/hosts/+/sample"


def sim_request(lei: str) -> str:
    """Co-simulation requests to this LEI's simulator (MQTT v5 request/response)."""
    return f"{ROOT}/{lei}/sim/request"


def sim_responses(lei: str) -> str:
    """The prefix of the response topics the simulator answers on: ``<prefix>/<requester>``."""
    return f"{ROOT}/{lei}/sim/response"


def all_host_health() -> str:
    """Filter for the retained verdicts, observed and predicted, of every host of every LEI this broker sees."""
    return f"{ROOT}/+/hosts/+/health/#"


def fed_decision(lei: str) -> str:
    """A broker's migration decision, shared with the federation (bridged)."""
    return f"{ROOT}/fed/{lei}/decision"


def migration_commands(lei: str) -> str:
    """Signed migration commands to this LEI's migrator (from its planner)."""
    return f"{ROOT}/{lei}/migrations/commands"


def migration_events(lei: str) -> str:
    """What the migrator did with each command: moved, rolled back, failed or refused."""
    return f"{ROOT}/{lei}/migrations/events"


def schedule(lei: str) -> str:
    """The LEI's current schedule S_t (task -> host), retained; republished after every move."""
    return f"{ROOT}/{lei}/tasks"


def all_schedules() -> str:
    """Filter for the schedule of every LEI this broker sees."""
    return f"{ROOT}/+/tasks"


def inject(lei: str, host: str) -> str:
    return f"{ROOT}/{lei}/inject/{host}"


def injections(lei: str) -> str:
    return f"{ROOT}/{lei}/injections"


def availability(service: str, instance: str) -> str:
    return f"{ROOT}/{service}/{instance}/available"


def service_counters(service: str, instance: str) -> str:
    """One service instance's counters (retained): what it dropped, judged, failed…"""
    return f"{ROOT}/{service}/{instance}/counters"


def all_service_counters() -> str:
    """Filter for the counters of every service instance on this broker."""
    return f"{ROOT}/+/+/counters"


def host_of(topic: str) -> str:
    """The host level of ``dragon/<lei>/hosts/<host>/...`` or ``dragon/<lei>/inject/<host>``."""
    parts = topic.split("/")
    if len(parts) >= 4 and parts[2] in {"hosts", "inject"}:
        return parts[3]
    raise ValueError(f"no host in topic {topic!r}")
