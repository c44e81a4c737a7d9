"""nbval runs the notebooks (both editions) under the reduced ``ci`` profile unless told otherwise.

The kernels nbval starts inherit this process's environment: the profile, the offline data folder
and a non-interactive matplotlib backend.
"""

import os
from pathlib import Path

os.environ.setdefault("DDPM_COURSE_PROFILE", "ci")
os.environ.setdefault("MPLBACKEND", "Agg")
_shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
if not os.environ.get("DDPM_COURSE_DATA") and _shared.is_dir():
    os.environ["DDPM_COURSE_DATA"] = str(_shared)
