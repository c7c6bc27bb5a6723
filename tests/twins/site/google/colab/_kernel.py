"""google.colab._kernel.Kernel: an IPythonKernel whose shell is google.colab._shell.Shell.

The twin's Colab kernelspec starts ipykernel with `--IPKernelApp.kernel_class=google.colab._kernel.Kernel`:
ipykernel 6.17.1 (Colab's) does not let `IPythonKernel.shell_class` be set from the command line (the trait has
no config tag; ipykernel says "Config option `shell_class` not recognized"), but `IPKernelApp.kernel_class` is
configurable, so the twin chooses the shell through the kernel class.
"""
from google.colab._shell import Shell
from ipykernel.ipkernel import IPythonKernel
from traitlets import Type


class Kernel(IPythonKernel):
    shell_class = Type(Shell)
