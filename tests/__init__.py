"""The test suite, a package so that its kit (tests/kit/) and helpers (tests/hostile.py)
import by one name from the tests and the benchmarks alike."""
