"""``python -m service`` is the ``facedb`` command."""

from service.cli import main

main()
