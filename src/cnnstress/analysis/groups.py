"""Group runs by what they ran, and name the groups.

A group is the set of runs whose identities (:mod:`cnnstress.core.identity`) differ only in the
seed, whatever their labels say. Its name is:

* the improvement it ran under, when its augmentation and loss are exactly that improvement's
  (no command-line override changed them, as ``run.json`` records);
* otherwise the overrides that changed them, as typed (``augmentation=[]``,
  ``cutout augmentation.cutout.size=8``): the improvement's name comes first unless it is the
  default ``baseline``, so the name reads as the group's difference from the baseline;
* followed by ``[key=value, ...]`` when another group of the same dataset and model has the same
  name, naming what tells them apart (``baseline [trainer.max_epochs=30]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cnnstress.analysis.runs import GroupKey, Run
from cnnstress.core.identity import IMPROVEMENT_KEYS, differences, under

DEFAULT_IMPROVEMENT = "baseline"
# Keys shown in a name's [key=value] part before the rest is only counted.
SHOWN_KEYS = 3


def base_name(runs: Sequence[Run]) -> str:
    """The name of a group of ``runs`` before telling same-named groups apart."""
    exact = sorted(r.improvement for r in runs if not r.changed_by)
    if exact:
        return exact[0]
    names = []
    for run in runs:
        prefix = [] if run.improvement == DEFAULT_IMPROVEMENT else [run.improvement]
        names.append(" ".join([*prefix, *run.changed_by]))
    return min(names, key=lambda n: (len(n), n))


def improvement_keys(keys: Sequence[str]) -> list[str]:
    """The keys an improvement may change (``augmentation.*``, ``loss.*``)."""
    return [k for k in keys if under(k, IMPROVEMENT_KEYS)]


def other_keys(keys: Sequence[str]) -> list[str]:
    """The keys an improvement may not change: a difference there is unconstrained."""
    return [k for k in keys if not under(k, IMPROVEMENT_KEYS)]


def _value(value: Any) -> str:
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else str(value)


def _suffix(identity: Mapping[str, Any], keys: Sequence[str]) -> str:
    shown = [f"{k}={_value(identity.get(k, '<unset>'))}" for k in keys[:SHOWN_KEYS]]
    if len(keys) > SHOWN_KEYS:
        shown.append(f"+{len(keys) - SHOWN_KEYS} keys")
    return f" [{', '.join(shown)}]"


def group_runs(runs: Sequence[Run]) -> dict[GroupKey, list[Run]]:
    """Group ``runs`` by identity without the seed; key each group by its name (see module)."""
    by_id: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        by_id.setdefault(run.group_id, []).append(run)
    named: dict[tuple[str, str, str], list[tuple[str, str, str]]] = {}
    for group_id, members in by_id.items():
        dataset, model, _ = group_id
        named.setdefault((dataset, model, base_name(members)), []).append(group_id)
    groups: dict[GroupKey, list[Run]] = {}
    for (dataset, model, name), ids in named.items():
        identities = {i: by_id[i][0].group_identity for i in ids}
        # What sets same-named groups apart: every key on which any two of them differ.
        apart = sorted(
            {
                k
                for a in ids
                for b in ids
                if a < b
                for k in differences(identities[a], identities[b])
            }
        )
        apart = other_keys(apart) + improvement_keys(apart)
        shown = {i: name if len(ids) == 1 else name + _suffix(identities[i], apart) for i in ids}
        for group_id in ids:
            label = shown[group_id]
            if list(shown.values()).count(label) > 1:  # the shown keys did not tell them apart
                label += f" #{group_id[2][:6]}"
            groups[GroupKey(dataset, model, label, group_id[2])] = by_id[group_id]
    return groups
