"""steerzoo's plain-torch building blocks (no dataset or method code)."""

import logging

# bitsandbytes' CPU backend tries, at import, to fetch an optional kernel from the hub through the `kernels`
# package and logs a warning when it cannot (always, offline). Its own fallback is what runs, and steerzoo
# turns that repacking path off anyway (zoo.backbone): the message is noise on every run, so that one logger
# is quietened to errors — nothing else.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
