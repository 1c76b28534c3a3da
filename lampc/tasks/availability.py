"""Whether lm-eval's registry tasks can get their data here, asked before any model runs.

lm-eval loads a task's data set when the task is built (Hugging Face `datasets`, from its local cache or the Hub).
Offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE set) a data set that is not cached fails at once; with no network and
no offline mode, only after the Hub client's retries (about 20 s). Either way the error is the datasets library's,
many frames deep: `check_task_data` turns it into `TaskDataUnavailable`, one line naming the task and its data set.

    check_task_data(["austen_choice", "arc_easy"], manager)   # TaskDataUnavailable: task 'arc_easy' needs ...
"""

from __future__ import annotations

import os

OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


class TaskDataUnavailable(LookupError):
    """A task's data set is neither cached here nor downloadable (offline, or no network)."""


def offline() -> bool:
    """Whether the Hugging Face libraries are told to stay offline (their own reading of the variables)."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in OFFLINE_VARIABLES)


def check_task_data(tasks: list, manager, *, own: tuple[str, ...] = ()) -> None:
    """Build each task given by name (lampc's own, given as configs, need no download) once, so its data set is
    read (or downloaded) now; one that cannot be had raises TaskDataUnavailable. `own` names lampc's tasks for the
    message."""
    for name in (t for t in tasks if isinstance(t, str)):
        try:
            manager.load([name])
        except OSError as err:  # datasets' ConnectionError, huggingface_hub's offline and not-cached errors
            raise TaskDataUnavailable(_message(name, manager, err, own)) from None


def _message(name: str, manager, err: OSError, own: tuple[str, ...]) -> str:
    entry = manager.task_index.get(name)
    path = (entry.cfg or {}).get("dataset_path") if entry is not None else None
    what = f"its data set {path}" if path else "its data"
    why = ("offline: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set and it is not cached" if offline()
           else f"no connection: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    alternative = f"; lampc's own tasks ({', '.join(own)}) need no download" if own else ""
    return (f"task {name!r} needs {what} from the Hugging Face Hub, which cannot be downloaded here ({why}). Run it "
            f"once where it can be downloaded (it is cached after, under HF_DATASETS_CACHE or "
            f"~/.cache/huggingface){alternative}")
