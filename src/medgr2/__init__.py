"""MedGR2: Generative Reward Learning for Medical Reasoning."""

from medgr2.configs import register_schemas
from medgr2.utils.resolvers import register_resolvers

__version__ = "0.1.0"

register_resolvers()
register_schemas()  # before any composition: conf/stage/*.yaml extend these schemas
