"""The pytest plugin: fixtures for testing apps against the Lakebase emulator or a real Lakebase branch.

``pip install "lakebase[testing]"`` registers it (entry point ``pytest11``); see the README's "Testing
your app". Its code is in the top-level module ``_lakebase_pytest`` so that pytest can load it without
importing the ``lakebase`` package (psycopg and the Databricks SDK: seconds) on every run; this name is
that same module object, so ``import lakebase.testing`` and ``-p lakebase.testing`` mean the plugin.
"""

import sys

from ._extras import requires_extra

with requires_extra("testing", __name__):
    import _lakebase_pytest

sys.modules[__name__] = _lakebase_pytest
