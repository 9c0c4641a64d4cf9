"""Run the store contract (tests/store_contract.py) on every backend (STATE-2).

The ``store`` fixture in tests/conftest_store.py is parametrised by backend,
so each test below runs once per backend.
"""

from tests.store_contract import *  # noqa: F403
