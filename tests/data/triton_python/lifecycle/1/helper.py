"""A module beside model.py, which it imports as Triton lets it."""


def double(array):
    return array * 2
