"""Declarative policy: the Policy schema and shipped presets.

A policy says what the service aims for on one gateway (hardware target, budgets,
objective and class weights, drift thresholds, adaptation limits, swap and rollback rules,
retention) and nothing about how. It is read from a TOML file and validated as a whole::

    from policies import load_policy, load_preset

    policy = load_policy("/etc/lifelong/policy.toml")  # every bad key reported at once
    policy = load_preset("battery-saver")

This package imports nothing but the standard library, so that any process can read a
policy without the ML core.
"""

from __future__ import annotations

from policies.class_weights import ClassWeights
from policies.errors import PolicyError, PolicyFileError, PolicyValidationError, Problem
from policies.loader import load_policy, parse_policy, parse_policy_text, policy_to_dict, policy_to_toml
from policies.presets import load_preset, preset_names
from policies.schema import (
    OBJECTIVE_KINDS,
    POLICY_FORMAT,
    RUNTIMES,
    AdaptationLimits,
    Budgets,
    DriftSettings,
    ExportSettings,
    Objective,
    Policy,
    Retention,
    SwapRules,
    Target,
)

__all__ = [
    "AdaptationLimits",
    "Budgets",
    "ClassWeights",
    "DriftSettings",
    "ExportSettings",
    "OBJECTIVE_KINDS",
    "Objective",
    "POLICY_FORMAT",
    "Policy",
    "PolicyError",
    "PolicyFileError",
    "PolicyValidationError",
    "Problem",
    "RUNTIMES",
    "Retention",
    "SwapRules",
    "Target",
    "load_policy",
    "load_preset",
    "parse_policy",
    "parse_policy_text",
    "policy_to_dict",
    "policy_to_toml",
    "preset_names",
]
