from .compare import compare_runs
from .metrics import METRICS, anls, exact_match, extract_choice, multiple_choice, normalize_answer, vqa_accuracy
from .runner import evaluate, summary_markdown
from .tasks import Task, builtin_tasks
