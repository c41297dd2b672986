"""Print the code location's definitions as JSON, as loaded under the current environment
(FASHION_PROFILE). Run in a fresh process per profile by test_definitions_snapshot.py, because
the profile is read when the asset modules are imported, as a deployment loads them.

    FASHION_PROFILE=gpu python -m fashion_pipeline_tests.defs_snapshot
"""

import json

import dagster as dg


def snapshot() -> dict:
    from fashion_pipeline.definitions import all_asset_checks, all_assets, defs

    graph = defs.resolve_asset_graph()
    ops = {}
    for a in all_assets:
        if isinstance(a, dg.AssetsDefinition):
            for k in a.keys:
                ops[k.to_user_string()] = a.op
    assets = {}
    for k in sorted(graph.get_all_asset_keys()):
        node = graph.get(k)
        op = ops[k.to_user_string()]
        cond = node.automation_condition
        assets[k.to_user_string()] = {
            "group": node.group_name,
            "pool": op.pool,
            "tags": {t: v for t, v in node.tags.items() if not t.startswith("dagster/kind/")},
            "op_tags": dict(op.tags),
            "automation": cond.get_label() if cond is not None else None,
        }
    checks = {}
    for c in all_asset_checks:
        for spec in c.check_specs:
            checks[spec.name] = {"asset": spec.asset_key.to_user_string(), "blocking": spec.blocking}

    def job_assets(name: str) -> dict:
        job = defs.resolve_job_def(name)
        return {"assets": sorted(k.to_user_string() for k in job.asset_layer.executable_asset_keys),
                "checks": sorted(k.name for k in job.asset_layer.asset_graph.asset_check_keys)}

    repo = defs.get_repository_def()
    jobs = {j.name: {**job_assets(j.name), "tags": dict(j.tags), "run_config": j.run_config or {}}
            for j in repo.get_all_jobs() if not j.name.startswith("__")}
    schedules = {s.name: {"job": s.job_name, "cron": s.cron_schedule, "timezone": s.execution_timezone,
                          **job_assets(s.job_name)} for s in repo.schedule_defs}
    sensors = {}
    for s in repo.sensor_defs:
        if isinstance(s, dg.AutomationConditionSensorDefinition):
            targets = s.asset_selection.resolve(graph)
            sensors[s.name] = {"automation_targets": sorted(k.to_user_string() for k in targets
                                                            if graph.get(k).automation_condition is not None)}
        else:
            sensors[s.name] = {"job": s.job_name, **job_assets(s.job_name)}
    return {"assets": assets, "checks": checks, "jobs": jobs, "schedules": schedules, "sensors": sensors}


if __name__ == "__main__":
    print(json.dumps(snapshot(), sort_keys=True))
