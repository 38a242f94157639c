"""Draft treatment plans: from the findings of a study, proposed procedures per tooth with codes, urgency,
alternatives, an estimate from the clinic's fees and whether the clinic's prepaid rights cover each, as an AI
DRAFT for the dentist to review, never a decision (docs/planning.md).

The rules, the code sets per market and the fee schedule are data (``edge/plan/data/``, files a clinic names in
``[plan]``): :mod:`edge.plan.rules`, :mod:`edge.plan.codes`, :mod:`edge.plan.fees`; what "covered" means is
:mod:`edge.plan.coverage`. :mod:`edge.plan.planner` is the pure core, :mod:`edge.plan.study` reads a stored study
for it, :mod:`edge.plan.fhir` writes the plan as FHIR R4 CarePlan and ServiceRequests.
"""

from edge.plan.errors import PlanError, PlanTableError
from edge.plan.planner import LABEL, Plan, make_plan
from edge.plan.study import study_plan

__all__ = ["LABEL", "Plan", "PlanError", "PlanTableError", "make_plan", "study_plan"]
