"""Errors the user can fix (bad paths, incompatible models, bad options). The CLI prints them as one line and
exits non-zero; anything else is a bug and keeps its traceback under SPECVLM_DEBUG=1."""


class SpecVLMError(ValueError):
    pass
