"""Package version and the repository that the notebooks' Colab badges open."""

__version__ = "0.1.0"
COLAB_REPO = "ddpm-course/ddpm-course"  # GitHub owner/name; README badges must agree (tests/test_readme.py)
