"""Names of a sweep's job directories that say what the sweep varied.

Hydra names a job by all of its overrides (`hydra.job.override_dirname`): with a long fixed override
(`dataset.path=/long/path`) the varied keys fall off the end of a length-capped name, and every job of
`python train.py -m experiment=real_tli dataset.path=... seed=42` looked alike. Here a job's name holds
the *swept* keys only (`3_seed-1_with_anchor-true`); the fixed overrides, the same in every job, are
cut. The full list stays in `<job dir>/.hydra/overrides.yaml`.

A key is swept when the sweep gives it several values: in `hydra.sweeper.params` (an experiment file)
or on the command line (`seed=42,1,2`, `range(...)`, `choice(...)`), a plain command-line value of the
same key overriding the sweeper's. Hydra's public override parser decides what is a sweep. Where the
sweep cannot be seen (a launcher that runs jobs in another process with another command line), every
override is kept, as Hydra does.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

SLUG_MAX = 80


def swept_keys(command_line: Iterable[str], sweeper_params: dict[str, Any] | None) -> set[str] | None:
    """The keys a sweep varies, from the sweeper's params and the command line; None when no override
    of either can be parsed (then nothing can be said and the caller keeps every key)."""
    parser = OverridesParser.create()
    params = [f"{key}={value}" for key, value in (sweeper_params or {}).items()]
    args = [a for a in command_line if "=" in a and not a.startswith("-")]
    try:
        from_params = parser.parse_overrides(params)
        from_args = parser.parse_overrides(args)
    except Exception:  # hydra's OverrideParseException and grammar errors: not a sweep we can read
        return None
    swept = {o.key_or_group for o in from_params if o.is_sweep_override()}
    for o in from_args:  # the command line wins over the sweeper's params
        if o.is_sweep_override():
            swept.add(o.key_or_group)
        else:
            swept.discard(o.key_or_group)
    return swept


def _part(item: str) -> str:
    """`key=value` as a path-safe `key-value`, a path value shortened to its last part."""
    key, sep, value = item.partition("=")
    if sep and "/" in value:
        value = Path(value).name or value
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", f"{key}-{value}" if sep else key).strip("_")


def job_dir_name(num: Any, override_dirname: str, swept: set[str] | None = None) -> str:
    """A sweep job's directory name: `<num>_<swept overrides>` (every override when `swept` is None),
    path-safe (no `/`, `=` or `,`), at most SLUG_MAX characters after the number: whole overrides are
    left out from the end (never half a value: `seed-4` for `seed=42` would mislead) and a hash of the
    full list keeps two long names apart."""
    items = [i for i in str(override_dirname).split(",") if i]
    if swept is not None:
        items = [i for i in items if i.partition("=")[0].lstrip("+~") in swept]
    parts = [_part(i) for i in items]
    slug = "_".join(parts)
    if len(slug) > SLUG_MAX:
        digest = hashlib.sha1(str(override_dirname).encode("utf-8")).hexdigest()[:8]
        while parts and len("_".join(parts)) > SLUG_MAX - 9:
            parts.pop()
        slug = "_".join([*parts, digest])
    return f"{num}_{slug}" if slug else str(num)


def job_dir(num: Any, override_dirname: str) -> str:
    """The `mre_job_dir` resolver: `job_dir_name` with the running sweep's swept keys."""
    params = None
    if HydraConfig.initialized():
        found = OmegaConf.select(HydraConfig.get(), "sweeper.params", default=None)
        params = OmegaConf.to_container(found, resolve=True) if found is not None else None
    return job_dir_name(num, override_dirname, swept_keys(sys.argv[1:], params))
