use super::*;
use crate::quantity::Quantity;
use crate::time::Time;

fn pod() -> Pod {
    let mut p = Pod {
        metadata: ObjectMeta::named("default", "web"),
        ..Pod::default()
    };
    p.metadata.uid = "u-1".into();
    p.metadata.resource_version = 7;
    p.metadata.labels.insert("app".into(), "web".into());
    p.spec.module = format!("sha256:{}", "a".repeat(64));
    p.spec.resources.limits.memory = Some(Quantity::new("64Mi"));
    p.spec.tolerations.push(Toleration {
        key: "dedicated".into(),
        value: "gpu".into(),
        ..Toleration::default()
    });
    p.status.start_time = Some(Time(1_700_000_000_123));
    p
}

#[test]
fn objects_round_trip_through_postcard_and_json() {
    let objects = [
        Object::Pod(pod()),
        Object::Node(Node::default()),
        Object::Module(Module::default()),
        Object::PriorityClass(PriorityClass {
            value: 1000,
            ..PriorityClass::default()
        }),
    ];
    for o in objects {
        let bytes = postcard::to_allocvec(&o).unwrap();
        assert_eq!(bytes[0] as u32, ENCODED, "written self-describing");
        assert_eq!(postcard::from_bytes::<Object>(&bytes).unwrap(), o);
        let json = serde_json::to_string(&o).unwrap();
        assert!(json.starts_with(&format!("{{\"{}\":", o.kind())), "{json}");
        assert_eq!(serde_json::from_str::<Object>(&json).unwrap(), o);
    }
}

#[test]
fn a_field_a_reader_does_not_know_is_refused_by_name() {
    // What a newer master would write: a pod with a field this build lacks.
    let mut body = serde_json::to_value(pod()).unwrap();
    body["spec"]["futureField"] = serde_json::json!(1);
    let bytes = postcard::to_allocvec(&(ENCODED, Kind::Pod, body.to_string())).unwrap();
    let err = postcard::from_bytes::<Object>(&bytes).unwrap_err();
    // postcard keeps only its own error kinds; the message is checked
    // through serde_json, the decoder the object goes through.
    assert!(matches!(err, postcard::Error::SerdeDeCustom), "{err:?}");
    let err = Object::from_body_json(Kind::Pod, &body.to_string()).unwrap_err();
    assert!(err.to_string().contains("futureField"), "{err}");
}

#[test]
fn fields_missing_from_an_older_writer_take_their_defaults() {
    let mut body = serde_json::to_value(pod()).unwrap();
    body["spec"].as_object_mut().unwrap().remove("tolerations");
    body["status"]
        .as_object_mut()
        .unwrap()
        .remove("nominatedNodeName");
    let bytes = postcard::to_allocvec(&(ENCODED, Kind::Pod, body.to_string())).unwrap();
    let Object::Pod(back) = postcard::from_bytes::<Object>(&bytes).unwrap() else {
        panic!("not a pod")
    };
    assert!(back.spec.tolerations.is_empty());
    assert_eq!(back.spec.module, pod().spec.module);
}

#[test]
fn kinds_parse_as_kubectl_does() {
    let cases = [
        ("pod", Some(Kind::Pod)),
        ("Pods", Some(Kind::Pod)),
        ("po", Some(Kind::Pod)),
        ("no", Some(Kind::Node)),
        ("mod", Some(Kind::Module)),
        ("priorityclass", Some(Kind::PriorityClass)),
        ("PriorityClasses", Some(Kind::PriorityClass)),
        ("pc", Some(Kind::PriorityClass)),
        ("deploy", Some(Kind::Deployment)),
        ("Deployments", Some(Kind::Deployment)),
        ("rs", Some(Kind::ReplicaSet)),
        ("statefulset", None),
    ];
    for (text, want) in cases {
        assert_eq!(Kind::parse(text), want, "{text}");
    }
    // A kind's number is its place on the wire: append only.
    let numbers: Vec<u32> = Kind::ALL.iter().map(|k| *k as u32).collect();
    assert_eq!(numbers, (0..Kind::ALL.len() as u32).collect::<Vec<_>>());
    assert_eq!(Kind::Module as u32, 2);
}

#[test]
fn merges_follow_each_kind() {
    let stored = pod();
    let mut incoming = pod();
    incoming.status.phase = PodPhase::Running;
    incoming.metadata.labels.clear();
    // A status update takes only the status.
    let Object::Pod(out) =
        Object::merge(&stored.clone().into(), incoming.clone().into(), true).unwrap()
    else {
        panic!()
    };
    assert_eq!(out.status.phase, PodPhase::Running);
    assert_eq!(out.metadata.labels, stored.metadata.labels);
    // Kinds do not mix.
    let err = Object::merge(&stored.into(), Node::default().into(), false).unwrap_err();
    assert!(err.contains("cannot replace a Pod with a Node"), "{err}");
    // A class's value is fixed.
    let class = PriorityClass {
        value: 10,
        ..PriorityClass::default()
    };
    let raised = PriorityClass {
        value: 11,
        ..class.clone()
    };
    assert!(Object::merge(&class.into(), raised.into(), false).is_err());
}

#[test]
fn defaults_are_left_out_of_the_wire_but_not_of_what_people_see() {
    let p = pod();
    let full = Object::Pod(p.clone()).to_manifest_value();
    assert_eq!(full["status"]["restartCount"], 0, "{full}");
    assert_eq!(
        full["spec"]["tolerations"][0]["operator"], "Equal",
        "{full}"
    );
    let bytes = postcard::to_allocvec(&Object::Pod(p.clone())).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("restartCount"), "{text}");
    assert!(text.contains("dedicated"), "{text}");
    // The compact form reads back whole, and does not leak into later output.
    assert_eq!(
        postcard::from_bytes::<Object>(&bytes).unwrap(),
        Object::Pod(p.clone())
    );
    assert_eq!(Object::Pod(p).to_manifest_value(), full);
}

/// A Deployment of `replicas` from a manifest, as a user writes one.
fn deployment_yaml(extra_spec: &str, template_labels: &str, policy: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector:
    matchLabels: {{app: web}}
{extra_spec}  template:
    metadata:
      labels: {template_labels}
    spec:
      module: ./web.wasm
      restartPolicy: {policy}
"
    )
}

/// What `parse_manifests` (which validates) says of a manifest.
fn errors_of(yaml: &str) -> Vec<String> {
    match crate::manifest::parse_manifests(yaml) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect(),
    }
}

#[test]
fn workload_templates_are_checked() {
    let ok = "{app: web}";
    // (extra spec, template labels, restart policy, expected error start or "")
    let cases = [
        ("", ok, "Always", ""),
        (
            "",
            "{app: db}",
            "Always",
            "spec.template.metadata.labels: do not match spec.selector",
        ),
        (
            "",
            ok,
            "Never",
            "spec.template.spec.restartPolicy: Never: only Always",
        ),
        (
            "  strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 0%}}\n",
            ok,
            "Always",
            "spec.strategy.rollingUpdate: maxSurge and maxUnavailable may not both be 0",
        ),
        (
            "  strategy: {rollingUpdate: {maxSurge: 150%}}\n",
            ok,
            "Always",
            "spec.strategy.rollingUpdate.maxSurge: \"150%\" is neither",
        ),
        (
            "  strategy: {type: Recreate, rollingUpdate: {maxSurge: 1}}\n",
            ok,
            "Always",
            "spec.strategy.rollingUpdate: only for strategy type RollingUpdate",
        ),
        (
            "  minReadySeconds: 30\n  progressDeadlineSeconds: 10\n",
            ok,
            "Always",
            "spec.progressDeadlineSeconds: must be more than minReadySeconds (30)",
        ),
        (
            "  replicas: 100001\n",
            ok,
            "Always",
            "spec.replicas: at most 100000",
        ),
    ];
    for (extra, labels, policy, want) in cases {
        let mut yaml = deployment_yaml(extra, labels, policy);
        if extra.contains("replicas:") {
            yaml = yaml.replacen("  replicas: 3\n", "", 1);
        }
        let errors = errors_of(&yaml);
        if want.is_empty() {
            assert!(errors.is_empty(), "{extra:?}: {errors:?}");
        } else {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "{extra:?} {labels} {policy}: want {want:?}, got {errors:?}"
            );
        }
    }
    // A selector-less ReplicaSet.
    let rs = "apiVersion: flotilla.dev/v1\nkind: ReplicaSet\nmetadata: {name: r}\nspec:\n  template:\n    spec: {module: ./a.wasm, restartPolicy: Always}\n";
    assert!(
        errors_of(rs)
            .iter()
            .any(|e| e.starts_with("spec.selector: required")),
        "{:?}",
        errors_of(rs)
    );
}

#[test]
fn a_workload_selector_is_fixed_and_the_template_round_trips() {
    let docs = crate::manifest::parse_manifests(&deployment_yaml("", "{app: web}", "Always"))
        .expect("parses");
    let d = docs[0].clone();
    let bytes = postcard::to_allocvec(&d).expect("encodes");
    let back: Object = postcard::from_bytes(&bytes).expect("decodes");
    assert_eq!(back, d);
    let Object::Deployment(stored) = d else {
        panic!("a deployment")
    };
    let mut moved = stored.clone();
    moved
        .spec
        .selector
        .match_labels
        .insert("tier".into(), "x".into());
    let err = Deployment::merge(&stored, moved, false).expect_err("selector is fixed");
    assert!(err.contains("spec.selector may not change"), "{err}");
    // Replicas 0 survives the wire (left out only when absent).
    let mut zero = stored.clone();
    zero.spec.replicas = Some(0);
    let o: Object = zero.into();
    let back: Object =
        postcard::from_bytes(&postcard::to_allocvec(&o).expect("encodes")).expect("decodes");
    assert_eq!(
        back.as_kind::<Deployment>().and_then(|d| d.spec.replicas),
        Some(0)
    );
    // The template hash ignores its own label.
    let mut t = stored.spec.template.clone();
    let h = t.hash();
    t.metadata
        .labels
        .insert(workload::POD_TEMPLATE_HASH.into(), h.clone());
    assert_eq!(t.hash(), h);
    assert_eq!(h.len(), 10);
}

#[test]
fn jobs_and_cron_jobs_say_what_is_wrong() {
    let job = |extra: &str, policy: &str| {
        format!(
            "apiVersion: flotilla.dev/v1\nkind: Job\nmetadata: {{name: j}}\nspec:\n{extra}  template:\n    spec: {{module: ./a.wasm, restartPolicy: {policy}}}\n"
        )
    };
    assert!(errors_of(&job("  completions: 5\n  parallelism: 2\n", "Never")).is_empty());
    let cases = [
        (
            "",
            "Always",
            "spec.template.spec.restartPolicy: a Job's pods must end",
        ),
        (
            "  completions: 0\n",
            "Never",
            "spec.completions: must be at least 1",
        ),
        (
            "  activeDeadlineSeconds: 0\n",
            "OnFailure",
            "spec.activeDeadlineSeconds",
        ),
        ("  selector: {}\n", "Never", "spec.selector"),
    ];
    for (extra, policy, want) in cases {
        let errors = errors_of(&job(extra, policy));
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{extra:?}: want {want:?}, got {errors:?}"
        );
    }
    let cron = |schedule: &str, zone: &str| {
        format!(
            "apiVersion: flotilla.dev/v1\nkind: CronJob\nmetadata: {{name: c}}\nspec:\n  schedule: {schedule:?}\n  timeZone: {zone}\n  jobTemplate:\n    spec:\n      template:\n        spec: {{module: ./a.wasm, restartPolicy: Always}}\n"
        )
    };
    let errors = errors_of(&cron("61 * * * *", "Mars/Olympus"));
    for want in [
        "spec.schedule: minute field",
        "spec.timeZone: unknown time zone",
        "spec.jobTemplate.spec.template.spec.restartPolicy",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "{want}: {errors:?}"
        );
    }
    let ok = cron("*/5 * * * *", "Europe/Madrid").replace("Always", "Never");
    assert!(errors_of(&ok).is_empty(), "{:?}", errors_of(&ok));
    // A Job's template and completions are fixed once made.
    let docs =
        crate::manifest::parse_manifests(&job("  completions: 2\n", "Never")).expect("parses");
    let Object::Job(stored) = docs[0].clone() else {
        panic!("a job")
    };
    let mut more = stored.clone();
    more.spec.completions = Some(3);
    assert!(Job::merge(&stored, more, false).is_err());
    let mut wider = stored.clone();
    wider.spec.parallelism = Some(4);
    assert!(Job::merge(&stored, wider, false).is_ok());
}

#[test]
fn the_sample_manifests_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../workloads");
    let mut seen = 0;
    for sample in std::fs::read_dir(&dir).expect("workloads dir") {
        let sample = sample.expect("entry").path();
        let Ok(files) = std::fs::read_dir(&sample) else {
            continue;
        };
        for f in files {
            let f = f.expect("entry").path();
            if f.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&f).expect("read");
                if let Err(e) = crate::manifest::parse_manifests(&text) {
                    panic!("{}: {e:?}", f.display());
                }
                seen += 1;
            }
        }
    }
    assert!(seen >= 10, "found {seen} sample manifests");
}

#[test]
fn config_maps_and_their_volumes_say_what_is_wrong() {
    let cm = "apiVersion: flotilla.dev/v1\nkind: ConfigMap\nmetadata: {name: app}\ndata:\n  level: \"1\"\n  bad/key: x\nbinaryData:\n  level: aGk=\n  blob: \"***\"\n";
    let errors = errors_of(cm);
    for want in [
        "data.bad/key: not a valid key",
        "binaryData.level: also in data",
        "binaryData.blob: not base64",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "{want}: {errors:?}"
        );
    }
    let pod = |volume: &str| {
        format!(
            "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  module: ./a.wasm\n  volumes:\n  - name: cfg\n{volume}"
        )
    };
    assert!(errors_of(&pod(
        "    configMap: {name: app, items: [{key: level, path: conf/level}]}\n"
    ))
    .is_empty());
    let errors = errors_of(&pod(
        "    configMap: {name: app, items: [{key: level, path: ../level}], defaultMode: 4095}\n",
    ));
    assert!(
        errors.iter().any(|e| e.contains("items[0].path")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("defaultMode")),
        "{errors:?}"
    );
    let errors = errors_of(&pod("    configMap: {name: app}\n    emptyDir: {}\n"));
    assert!(
        errors.iter().any(|e| e.contains("exactly one source")),
        "{errors:?}"
    );
    // An immutable ConfigMap keeps its data.
    let docs = crate::manifest::parse_manifests(
        "apiVersion: flotilla.dev/v1\nkind: ConfigMap\nmetadata: {name: app}\nimmutable: true\ndata: {a: \"1\"}\n",
    )
    .expect("parses");
    let Object::ConfigMap(stored) = docs[0].clone() else {
        panic!("a configmap")
    };
    let mut changed = stored.clone();
    changed.data.insert("a".into(), "2".into());
    assert!(ConfigMap::merge(&stored, changed, false).is_err());
}

#[test]
fn environment_sources_say_what_is_wrong() {
    let pod = |env: &str| {
        format!("apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  module: ./a.wasm\n{env}")
    };
    let ok = "  env:\n  - name: A\n    valueFrom: {configMapKeyRef: {name: app, key: level}}\n  - name: N\n    valueFrom: {fieldRef: {fieldPath: spec.nodeName}}\n  envFrom:\n  - {configMapRef: {name: app}, prefix: X_}\n";
    assert!(errors_of(&pod(ok)).is_empty(), "{:?}", errors_of(&pod(ok)));
    let cases = [
        ("  env:\n  - name: A\n    value: x\n    valueFrom: {fieldRef: {fieldPath: metadata.name}}\n", "value or valueFrom"),
        ("  env:\n  - name: A\n    valueFrom: {fieldRef: {fieldPath: status.podIP}}\n", "use one of"),
        ("  env:\n  - name: A\n    valueFrom: {}\n", "exactly one of"),
        ("  envFrom:\n  - {prefix: X_}\n", "configMapRef"),
    ];
    for (env, want) in cases {
        let errors = errors_of(&pod(env));
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{want}: {errors:?}"
        );
    }
}
