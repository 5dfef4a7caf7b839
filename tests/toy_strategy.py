"""A toy mitigation strategy defined outside the package, as a newcomer would write one (README, "Extending"):
a post-hoc step that keeps the Phase 2 model as it is (a copy), one run per value of ``copies``."""

from __future__ import annotations

import shutil

from cft_utils.mitigation.base import Parameters, PosthocStrategy


class Params(Parameters):
    copies: list[int] = [1]  # one run per value, labelled Toy_<value>
    note: str = "a copy of the Phase 2 model"


class CopyPhase2(PosthocStrategy):
    name = "toy_copy"
    label_prefix = "Toy"
    order = 55  # between ER (50) and interpolation (60) in the tables
    Params = Params

    def variants(self, params, cell):
        return self.numbered(params.copies, "copy", note=params.note)

    def apply(self, run, cfg, p1_dir, p2_dir, out_dir):
        shutil.copytree(p2_dir, out_dir, dirs_exist_ok=True)
        return {"copied_from": str(p2_dir), "note": run.variant.params["note"]}

    def summary(self, info):
        return {"copied_from": info.get("copied_from")}
