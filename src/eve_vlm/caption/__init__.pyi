from .engine import run
from .experts import Expert, load_expert, register_expert, run_experts
from .fusers import PromptTemplate, RuleFuser, load_fuser
