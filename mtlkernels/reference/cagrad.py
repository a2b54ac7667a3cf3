"""PLACEHOLDER — being written; replaced by the float64 reference."""


def cagrad(J, **options):
    raise NotImplementedError("reference cagrad is not implemented yet")
