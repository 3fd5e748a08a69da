use super::*;
use flotilla_api::meta::ObjectMeta;
use flotilla_api::objects::{Module, Node, PriorityClass, ReadyState};
use std::collections::BTreeMap;

/// Objects by key, as a store would answer.
#[derive(Default)]
struct Objects(BTreeMap<String, Object>);

impl Objects {
    fn with(mut self, o: impl Into<Object>) -> Objects {
        let o = o.into();
        self.0.insert(o.key(), o);
        self
    }
}

impl Lookup for Objects {
    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Object>, ApiError> {
        Ok(self
            .0
            .get(&flotilla_api::objects::object_key(kind, namespace, name))
            .cloned())
    }

    fn list(&self, kind: Kind) -> Result<Vec<Object>, ApiError> {
        Ok(self
            .0
            .values()
            .filter(|o| o.kind() == kind)
            .cloned()
            .collect())
    }
}

const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn module() -> Module {
    let mut m = Module::default();
    m.metadata.name = module_name(DIGEST);
    m.spec.digest = DIGEST.into();
    m
}

fn pod(name: &str) -> Pod {
    let mut p = Pod {
        metadata: ObjectMeta::named("default", name),
        ..Pod::default()
    };
    p.spec.module = DIGEST.into();
    p
}

fn class(name: &str, value: i32, default: bool) -> PriorityClass {
    PriorityClass {
        metadata: ObjectMeta::named("", name),
        value,
        global_default: default,
        ..PriorityClass::default()
    }
}

fn code(r: &Result<Object, ApiError>) -> Option<ErrorCode> {
    r.as_ref().err().map(|e| e.code)
}

#[test]
fn creates_table() {
    let world = Objects::default()
        .with(module())
        .with(class("high", 1000, false));
    let admin = Caller::Admin;
    let mut status_set = pod("s");
    status_set.status.phase = flotilla_api::objects::PodPhase::Running;
    let mut missing_module = pod("m");
    missing_module.spec.module = format!("sha256:{}", "b".repeat(64));
    let mut a_path = pod("p");
    a_path.spec.module = "./hello.wasm".into();
    let mut high = pod("h");
    high.spec.priority_class_name = "high".into();
    let mut unknown_class = pod("u");
    unknown_class.spec.priority_class_name = "nope".into();
    let mut stated_wrong = high.clone();
    stated_wrong.spec.priority = Some(5);
    let mut critical = pod("c");
    critical.spec.priority_class_name = "system-node-critical".into();
    let mut bad_name = pod("Bad_Name");
    bad_name.metadata.name = "Bad_Name".into();
    let mut node = Node::default();
    node.metadata.name = "n1".into();
    let mut labelled = node.clone();
    labelled
        .metadata
        .labels
        .insert("node-role.flotilla.dev/gpu".into(), String::new());
    let n1 = Caller::Node("n1".into());
    // (caller, object, error code or None, what the stored object shows)
    type Check = fn(&Object) -> bool;
    let cases: Vec<(&Caller, Object, Option<ErrorCode>, Check)> = vec![
        (&admin, pod("ok").into(), None, |o| {
            let p = o.as_pod().unwrap();
            p.metadata.uid == "uid-1" && p.spec.priority == Some(0)
        }),
        (&admin, status_set.into(), None, |o| {
            o.as_pod().unwrap().status == Default::default()
        }),
        (
            &admin,
            missing_module.into(),
            Some(ErrorCode::Invalid),
            |_| true,
        ),
        (&admin, a_path.into(), Some(ErrorCode::Invalid), |_| true),
        (&admin, high.into(), None, |o| {
            o.as_pod().unwrap().spec.priority == Some(1000)
        }),
        (
            &admin,
            unknown_class.into(),
            Some(ErrorCode::Invalid),
            |_| true,
        ),
        (
            &admin,
            stated_wrong.into(),
            Some(ErrorCode::Invalid),
            |_| true,
        ),
        (&admin, critical.into(), None, |o| {
            o.as_pod().unwrap().spec.priority == Some(priority_class::SYSTEM_CRITICAL)
        }),
        (&admin, bad_name.into(), Some(ErrorCode::Invalid), |_| true),
        (&admin, module().into(), Some(ErrorCode::Invalid), |_| true),
        (&n1, node.into(), None, |_| true),
        (
            &n1,
            labelled.clone().into(),
            Some(ErrorCode::Forbidden),
            |_| true,
        ),
        (&admin, labelled.into(), None, |_| true),
        (&admin, class("low", 1, false).into(), None, |_| true),
        (
            &admin,
            class("system-x", 1, false).into(),
            Some(ErrorCode::Invalid),
            |_| true,
        ),
        (
            &admin,
            class("huge", i32::MAX, false).into(),
            Some(ErrorCode::Invalid),
            |_| true,
        ),
    ];
    for (caller, obj, want, check) in cases {
        let what = obj.describe();
        let got = admit_create(caller, obj, &world, "uid-1".into(), Time(1));
        assert_eq!(code(&got), want, "{caller} creates {what}: {got:?}");
        if let Ok(o) = &got {
            assert!(check(o), "{what}: {o:?}");
            assert_eq!(o.meta().creation_timestamp, Some(Time(1)));
        }
    }
}

#[test]
fn the_default_class_applies_and_is_alone() {
    let world = Objects::default()
        .with(module())
        .with(class("normal", 10, true));
    let got = admit_create(&Caller::Admin, pod("x").into(), &world, "u".into(), Time(1)).unwrap();
    let p = got.as_pod().unwrap();
    assert_eq!(
        (p.spec.priority, p.spec.priority_class_name.as_str()),
        (Some(10), "normal")
    );
    let second = admit_create(
        &Caller::Admin,
        class("other", 5, true).into(),
        &world,
        "u".into(),
        Time(1),
    );
    assert_eq!(code(&second), Some(ErrorCode::Invalid));
}

#[test]
fn pod_specs_are_fixed_but_a_pod_binds_once() {
    let world = Objects::default().with(module());
    let stored: Object = pod("x").into();
    let mut bound = pod("x");
    bound.spec.node_name = Some("n1".into());
    let (obj, rv) = admit_update(&Caller::Admin, bound.clone().into(), Some(&stored), &world)
        .expect("binding an unbound pod");
    assert_eq!(rv, None);
    assert_eq!(obj.as_pod().unwrap().spec.node_name.as_deref(), Some("n1"));
    let mut rebound = bound.clone();
    rebound.spec.node_name = Some("n2".into());
    let err = admit_update(
        &Caller::Admin,
        rebound.into(),
        Some(&bound.clone().into()),
        &world,
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::Invalid);
    // What the master set on create stays when a manifest leaves it out.
    let mut prioritized = bound.clone();
    prioritized.spec.priority = Some(0);
    prioritized.spec.preemption_policy = Some(PreemptionPolicy::PreemptLowerPriority);
    let (obj, _) = admit_update(
        &Caller::Admin,
        pod("x").into(),
        Some(&prioritized.clone().into()),
        &world,
    )
    .expect("an unchanged manifest applies again");
    assert_eq!(obj.as_pod().unwrap().spec, prioritized.spec);
    let mut args = pod("x");
    args.spec.args = vec!["--new".into()];
    args.metadata.resource_version = 4;
    let err = admit_update(&Caller::Admin, args.into(), Some(&stored), &world).unwrap_err();
    assert!(err.message.contains("cannot change once created"), "{err}");
}

#[test]
fn status_writes_table() {
    let mut stored = pod("x");
    stored.metadata.uid = "u-1".into();
    stored.spec.node_name = Some("n1".into());
    stored
        .status
        .set_condition(flotilla_api::objects::PodCondition {
            type_: "PodScheduled".into(),
            status: true,
            ..Default::default()
        });
    stored.status.nominated_node_name = Some("n1".into());
    let stored_obj: Object = stored.clone().into();
    let report = |uid: &str| {
        let mut p = stored.clone();
        p.metadata.uid = uid.into();
        p.status.conditions.clear();
        p.status.nominated_node_name = None;
        p.status.phase = flotilla_api::objects::PodPhase::Running;
        Object::Pod(p)
    };
    let n1 = Caller::Node("n1".into());
    let n2 = Caller::Node("n2".into());
    let cases = [
        (&n1, report("u-1"), None),
        (&n1, report(""), Some(ErrorCode::Invalid)),
        (&n1, report("u-2"), Some(ErrorCode::Conflict)),
        (&n2, report("u-1"), Some(ErrorCode::Forbidden)),
        (&Caller::Admin, report(""), None),
    ];
    for (caller, obj, want) in cases {
        let got = admit_status(caller, obj, &stored_obj);
        assert_eq!(code(&got), want, "{caller}: {got:?}");
        if let Ok(Object::Pod(p)) = got {
            assert!(p.status.condition("PodScheduled").is_some(), "kept");
            if caller.node().is_some() {
                assert_eq!(p.status.nominated_node_name.as_deref(), Some("n1"));
            }
        }
    }
    // An evicted pod (Failed, NodeLost) stays ended whatever its node says;
    // the master may still change it, and the node may report it ended.
    let mut evicted = stored.clone();
    evicted.status.phase = flotilla_api::objects::PodPhase::Failed;
    evicted.status.reason = "NodeLost".into();
    let evicted: Object = evicted.into();
    let got = admit_status(&n1, report("u-1"), &evicted);
    assert_eq!(code(&got), Some(ErrorCode::Conflict), "{got:?}");
    assert!(got
        .unwrap_err()
        .message
        .contains("has ended (Failed, NodeLost)"));
    assert_eq!(
        code(&admit_status(&Caller::Admin, report("u-1"), &evicted)),
        None
    );
    let mut failed_again = report("u-1");
    if let Object::Pod(p) = &mut failed_again {
        p.status.phase = flotilla_api::objects::PodPhase::Failed;
    }
    assert_eq!(code(&admit_status(&n1, failed_again, &evicted)), None);
    // A node's report of itself keeps the master's judgement of readiness.
    let mut node = Node::default();
    node.metadata.name = "n1".into();
    node.status.ready = ReadyState::NotReady;
    let mut claim = node.clone();
    claim.status.ready = ReadyState::Ready;
    claim.status.capacity.pods = 7;
    let Object::Node(out) = admit_status(&n1, claim.clone().into(), &node.clone().into()).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (out.status.ready, out.status.capacity.pods),
        (ReadyState::NotReady, 7)
    );
    let Object::Node(out) =
        admit_status(&Caller::Controller("lifecycle"), claim.into(), &node.into()).unwrap()
    else {
        panic!()
    };
    assert_eq!(out.status.ready, ReadyState::Ready);
}

#[test]
fn sizes_count_what_the_store_would_keep() {
    let mut big = pod("x");
    big.metadata.annotations.insert(
        "example.com/blob".into(),
        "x".repeat(manifest::MAX_OBJECT_SIZE),
    );
    let err = check_sizes(None, &big.clone().into(), false).unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge);
    // A small status over a big stored object is weighed with it.
    let mut stored = pod("x");
    stored.metadata.annotations.insert(
        "example.com/blob".into(),
        "x".repeat(manifest::MAX_OBJECT_SIZE - 400),
    );
    let mut status = pod("x");
    status.status.message = "y".repeat(1000);
    let err = check_sizes(Some(&stored.into()), &status.into(), true).unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge);
}

#[test]
fn objects_are_made_only_in_namespaces_that_exist_and_are_not_going() {
    use flotilla_api::objects::Namespace;
    let mut going = Namespace::named("old");
    going.metadata.deletion_timestamp = Some(Time(1));
    let objects = Objects::default()
        .with(module())
        .with(Namespace::named("lab"))
        .with(going);
    let admit = |ns: &str| {
        let mut p = pod("p");
        p.metadata.namespace = ns.into();
        admit_create(
            &Caller::Admin,
            Object::Pod(p),
            &objects,
            "u".into(),
            Time(2),
        )
    };
    assert!(admit("lab").is_ok());
    assert!(admit("default").is_ok(), "default always exists");
    let e = admit("nowhere").expect_err("missing namespace");
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("--create-namespace"), "{}", e.message);
    let e = admit("old").expect_err("namespace going");
    assert_eq!(e.code, ErrorCode::Forbidden);
    assert!(e.message.contains("being deleted"), "{}", e.message);
    // Cluster-scoped kinds have no namespace to check.
    assert!(admit_create(
        &Caller::Admin,
        Object::Namespace(Namespace::named("new")),
        &objects,
        "u".into(),
        Time(2)
    )
    .is_ok());
}

#[test]
fn a_service_port_belongs_to_one_service_in_the_cluster() {
    use flotilla_api::objects::service::Service;
    let svc = |ns: &str, name: &str, ports: &[u16]| -> Service {
        let ports: Vec<String> = ports
            .iter()
            .map(|p| format!("{{name: p{p}, port: {p}}}"))
            .collect();
        let mut s: Service = serde_yaml::from_str(&format!(
            "spec: {{selector: {{app: x}}, ports: [{}]}}",
            ports.join(", ")
        ))
        .expect("yaml");
        s.metadata = ObjectMeta::named(ns, name);
        s
    };
    let world = Objects::default()
        .with(flotilla_api::objects::Namespace {
            metadata: ObjectMeta::named("", "default"),
            ..Default::default()
        })
        .with(flotilla_api::objects::Namespace {
            metadata: ObjectMeta::named("", "lab"),
            ..Default::default()
        })
        .with(svc("default", "web", &[8080, 9000]));
    let create = |s: Service| {
        admit_create(
            &Caller::Admin,
            Object::Service(s),
            &world,
            "u".into(),
            Time(1),
        )
    };
    let taken = create(svc("lab", "other", &[7000, 9000])).unwrap_err();
    assert!(
        taken
            .message
            .contains("spec.ports[1].port: 9000 is taken by service default/web"),
        "{}",
        taken.message
    );
    assert!(create(svc("lab", "other", &[7000])).is_ok());
    // The Service itself may keep its ports on update.
    let update = admit_update(
        &Caller::Admin,
        Object::Service(svc("default", "web", &[8080, 9001])),
        None,
        &world,
    );
    assert!(update.is_ok(), "{update:?}");
}
