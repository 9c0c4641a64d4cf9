pytest_plugins = [
    "tests.conftest_loop",
    "tests.conftest_store",
    "tests.conftest_mongo",
    "tests.conftest_hsm",
    "tests.conftest_server",
]
