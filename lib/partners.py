"""The instance-level partners CLD can join, by name. Each is one module with the face described in
lib/memory.py (views, build, loss, update, state_dict); adding a partner is its module, one line here
and its rows in lib/recipes.py."""
from lib.byol import BYOLTarget
from lib.infomin import InfoMin
from lib.memory import MemoryBank
from lib.moco import MomentumEncoder

PARTNERS = {
    "npid": MemoryBank,        # NPID's memory bank (Wu et al. 2018)
    "moco": MomentumEncoder,   # MoCo's key encoder and queue (He et al. 2020): the paper's CLDm
    "byol": BYOLTarget,        # BYOL's target network (Grill et al. 2020): BYOL+CLD, and C2BIN's instance part
    "infomin": InfoMin,        # InfoMin's (Tian et al. 2020): MoCo's queue, three crops and a jigsaw branch
}
