"""Training data for segment models: phantoms in the ImageCAS-X layout, prepared with their codes.

:class:`PhantomSegmentsDataModule` is :class:`~vesselfm.data.datamodules.PhantomDataModule` with
the phantoms written as ImageCAS-X (``layout=imagecasx``: segment maps with codes 1..14) and
prepared with ``labels=segments`` (the codes kept through resampling), for
``experiment=phantom_segments``. Segment codes travel out of the loader workers as uint8 (the
packed 0/1 transfer, ``data.label_bits``, is refused for them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vesselfm.data.datamodules import PhantomDataModule

log = logging.getLogger(__name__)


class PhantomSegmentsDataModule(PhantomDataModule):
    """ImageCAS-X-layout phantoms prepared with ``labels=segments`` into ``<work_dir>/prepared``.

    Cases ``1..n_train`` train, then ``n_val`` val and ``n_test`` test (the phantoms' own
    ``filelist/`` is rewritten to say so). Arguments as :class:`PhantomDataModule`;
    ``label_bits`` must stay false (segment codes are not 0/1).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("label_bits"):
            raise ValueError(
                "data.label_bits packs 0/1 labels and segment codes go up to 14: set "
                "data.label_bits=false"
            )
        super().__init__(*args, **kwargs)

    def prepare_data(self) -> None:
        from vesselfm.data.phantom import write_phantom_dataset
        from vesselfm.data.phantom.imagecasx import _write_text
        from vesselfm.data.prepare import PrepareOptions, prepare_dataset

        raw = self.work_dir / "raw"
        total = sum(self.n.values())
        for index in range(1, total + 1):
            files = (
                raw / "volumes" / f"{index}.img.nii.gz",
                raw / "segmentations" / f"{index}.coronary.nii.gz",
            )
            if not all(p.is_file() for p in files):
                write_phantom_dataset(
                    raw,
                    1,
                    shape=self.shape,
                    seed=self.seed,
                    start_index=index,
                    progress=False,
                    layout="imagecasx",
                )
        ids = iter(range(1, total + 1))
        for split in ("train", "val", "test"):
            listed = "".join(f"{next(ids)}\n" for _ in range(self.n[split]))
            _write_text(Path(raw) / "filelist" / f"{split}.txt", listed)
        prepare_dataset(
            raw,
            self.data_dir,
            layout="imagecasx",
            options=PrepareOptions(
                preprocess=self._preprocess_config, layout="imagecasx", labels="segments"
            ),
            workers=self.prepare_workers,
            progress=False,
        )


__all__ = ["PhantomSegmentsDataModule"]
