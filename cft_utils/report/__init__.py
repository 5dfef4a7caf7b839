"""What readers see: training tables and loss curves, the report site (top layer; imports anything below).

Modules (this file imports nothing):
  training   one row per run (status, loss, steps, runtime) and loss curves
  site       the report site reports/<name>/index.html
  browser    headless Chromium check of the reports (console errors, images, stderr blocks)
"""
