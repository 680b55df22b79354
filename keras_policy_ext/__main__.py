"""`python -m keras_policy_ext`: the `keras-policy-ext` command."""

import sys

from keras_policy_ext.cli import main

sys.exit(main())
