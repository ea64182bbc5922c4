"""What one rank does for a run, the same under every launcher: the worker's lifecycle (`worker.py`),
what a rank loads (`rank_model.py`), the roles it plays (`roles.py`: source, sink, driver, inbox,
hooks, output), the block queue (`driver.py`), prompts (`prompts.py`) and its report (`rank_report.py`)."""
