"""Optimizer rules, one per module: each exports ``rule(node, ctx) -> PlanNode | None``."""
