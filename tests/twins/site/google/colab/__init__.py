"""A stand-in for Colab's own `google.colab` package, for the platform twins (.ci/twins/twin.py).

Not the PyPI package named google-colab (that is not Colab's). Only what this project and the tools it meets
touch: `drive.mount` (a real mount point, backed by a folder that outlives the twin's "VMs") and the kernel
class `google.colab._shell.Shell`, whose name is how kagglehub recognises Colab (`"google.colab" in
str(get_ipython())`, Kaggle/kagglehub commit f81f26f). On Kaggle the package is importable too (Kaggle's image
is built FROM Colab's: tests/platform_facts.py), but the kernel is a plain ipykernel one, so `drive.mount`
refuses there, as Colab's needs Colab's frontend.
"""
