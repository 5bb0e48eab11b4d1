"""python -m gw.ctl (the image runs gwctl this way: no pip install there)."""
import sys

from gw.ctl import main

sys.exit(main())
