"""Card templates (Jinja, rendered by huggingface_hub's ``from_template``), shipped with the package."""

from pathlib import Path

SELECTION_CARD = Path(__file__).with_name("selection_card.md")
STUDENT_CARD = Path(__file__).with_name("student_card.md")
