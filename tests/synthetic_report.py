"""A synthetic notebook shaped like the compendium's (parameters, notebook.start, noisy library calls, a figure
and a table), for the reproduce and browser tests: seconds to run, no training."""

from __future__ import annotations

import nbformat

NOISE = r'''
import logging, os, subprocess, sys, warnings
warnings.warn("a library warning")
logging.getLogger("transformers.synthetic").warning("a transformers log line")
from tqdm.auto import tqdm
for _ in tqdm(range(3), desc="a progress bar"):
    pass
print("to stderr", file=sys.stderr)
os.write(2, b"fd-level stderr\n")
subprocess.run([sys.executable, "-c", "import sys; print('subprocess stderr', file=sys.stderr)"], check=True)
print("run phase2/x: reused (done before)")
'''

FIGURE = r'''
import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
from pathlib import Path
from cft_utils.outputs import save_figure, save_table

fig, ax = plt.subplots(figsize=(3, 2))
ax.plot([0, 1], [0, 1])
save_figure(fig, Path(figdir) / "fig1_synthetic")
table = pd.DataFrame({"model": ["a", "b"], "score": [0.306667, 0.23]})
save_table(table, Path(figdir) / "table1", caption="Table 1: synthetic scores")
table
'''


def synthetic_notebook(path, fail: bool = False):
    """A notebook shaped like the compendium's: parameters, notebook.start, noisy library calls, a figure."""
    v4 = nbformat.v4
    cells = [
        v4.new_markdown_cell("# Synthetic report\n\nPurpose: exercise reproduce."),
        v4.new_code_cell('profile = "smoke"\noverrides = {}\nfigdir = "."', metadata={"tags": ["parameters"]}),
        v4.new_markdown_cell("## Set-up"),
        v4.new_code_cell("from cft_utils import notebook\n\ncfg = notebook.start(profile, overrides)\n"
                         "print('OUTPUT_NAME', cfg.output_name, json.dumps(cfg.overrides))".replace(
                             "from cft_utils", "import json\nfrom cft_utils")),
        v4.new_markdown_cell("## Library noise"),
        v4.new_code_cell(NOISE),
        v4.new_markdown_cell("## Figure 1 and Table 1"),
        v4.new_code_cell(FIGURE),
    ]
    if fail:
        cells += [v4.new_markdown_cell("## Where it breaks"),
                  v4.new_code_cell('raise ValueError("synthetic failure")'),
                  v4.new_code_cell('print("never reached")')]
    nb = v4.new_notebook(cells=cells)
    from cft_utils.setup_env import KERNEL_DISPLAY, KERNEL_NAME

    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": KERNEL_DISPLAY, "language": "python"}
    nbformat.write(nb, path)
    return path


def stderr_outputs(nb) -> list:
    """The stderr stream outputs of an executed notebook."""
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "stream" and o.get("name") == "stderr"]
