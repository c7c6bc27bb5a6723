"""google.colab._shell.Shell: Colab's kernel shell, a ZMQInteractiveShell subclass (the kernel class
google.colab._kernel.Kernel makes it the shell). Its module path is what `str(get_ipython())` shows, which is
how kagglehub recognises Colab."""
from ipykernel.zmqshell import ZMQInteractiveShell


class Shell(ZMQInteractiveShell):
    """Colab's shell."""
