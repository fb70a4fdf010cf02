"""A dataset config becomes its records and its train/dev/test splits (readers or the generator)."""

from __future__ import annotations

from pathlib import Path

from mre.data.hub_data import from_hub, load_mmm
from mre.data.options import DatasetConfig, Source, TLIField
from mre.data.readers import load_source
from mre.data.record import Record
from mre.data.splits import Splits, make_splits
from mre.data.synthetic import generate
from mre.data.wli_format import WLIFormat
from mre.errors import ConfigError, MissingInputError


def load_sources(ds: DatasetConfig, wli_format: WLIFormat | None = None) -> dict[str, list[Record]]:
    """Records of a dataset config by named split; a missing path says what file is expected. Without a
    path, an MMM set (`dataset.lang`, `dataset.task`) comes from the hub. With `wli_format`, a read WLI
    pair that format cannot serialize is a bad row."""
    if ds.source is Source.synthetic:
        s = ds.synthetic
        recs = generate(
            s.n,
            n_classes=s.n_classes,
            language=ds.language.value,
            seed=s.seed,
            wli_helps_tli=s.wli_helps_tli,
            tli_helps_wli=s.tli_helps_wli,
        )
        return {"all": recs}
    if ds.tli_field is not TLIField.scenario and ds.source is not Source.slurp:
        raise ConfigError(
            f"dataset.tli_field={ds.tli_field} applies to source slurp only; dataset {ds.name!r} has source "
            f"{ds.source}, whose text label is fixed by its format (leave dataset.tli_field unset)"
        )
    if from_hub(ds):
        return load_mmm(ds, wli_format)
    if ds.path is None or not Path(ds.path).exists():
        where = "no path was given" if ds.path is None else f"{ds.path} does not exist"
        raise MissingInputError(
            f"dataset {ds.name!r}: {where}. Expected {ds.expected or f'a {ds.source} file'}; "
            f"give it with dataset.path=/path/to/it"
        )
    return load_source(
        ds.source.value,
        ds.path,
        on_bad_row=ds.on_bad_row,
        sort_multi_labels=ds.sort_multi_labels,
        wli_format=wli_format,
        tli_field=str(ds.tli_field),
    )


def load_splits(ds: DatasetConfig, wli_format: WLIFormat | None = None) -> Splits:
    """The seeded train/dev/test splits of a dataset config (`dataset.n_train`, ...); `wli_format`:
    as in `load_sources`."""
    return make_splits(load_sources(ds, wli_format), ds.n_train, ds.n_test, ds.n_dev, ds.split_seed)
