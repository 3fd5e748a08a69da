//! Which store events a watch delivers: those of the objects it selects
//! (kind, namespace, labels, node) that its caller may read. An object that
//! stops matching (its labels change, a pod moves off a node) reaches the
//! watcher once more, as a deletion, so that its cache drops it.

use super::authz::node_may_read;
use flotilla_api::protocol::{EventType, ListOptions, WatchEvent};
use flotilla_api::selector::Selector;
use flotilla_api::Object;
use std::collections::HashSet;

/// Whether `o` is a pod bound to `node` (every object if no node is asked).
pub fn on_node(o: &Object, node: Option<&str>) -> bool {
    match (node, o) {
        (None, _) => true,
        (Some(n), Object::Pod(p)) => p.spec.node_name.as_deref() == Some(n),
        (Some(_), _) => false,
    }
}

/// Whether `o` is among what `opts` lists.
pub fn selects(o: &Object, opts: &ListOptions, selector: &Selector) -> bool {
    opts.kind.is_none_or(|k| k == o.kind())
        && opts
            .namespace
            .as_deref()
            .is_none_or(|ns| ns == o.meta().namespace)
        && selector.matches(&o.meta().labels)
        && on_node(o, opts.node_name.as_deref())
}

/// The state of one watch: what it selects, for whom, and which keys it has
/// delivered as present.
pub struct Filter {
    opts: ListOptions,
    selector: Selector,
    /// The node calling, whose watches see only its Node and its pods
    /// (modules are immutable and fetched by digest).
    node: Option<String>,
    /// The uids of the objects this watch has delivered as present.
    present: HashSet<String>,
}

impl Filter {
    pub fn new(opts: ListOptions, selector: Selector, node: Option<String>) -> Filter {
        Filter {
            opts,
            selector,
            node,
            present: HashSet::new(),
        }
    }

    /// How to deliver `ev`, if at all: as it is, or as a deletion (the
    /// object left what this watch selects). Looks at the event without
    /// copying it: a node's watch skips almost every event.
    pub fn admit(&mut self, ev: &WatchEvent) -> Option<EventType> {
        let here = selects(&ev.object, &self.opts, &self.selector)
            && match &self.node {
                Some(me) => node_may_read(me, &ev.object, &|_| false),
                None => true,
            };
        let meta = ev.object.meta();
        // Objects by uid: no key to build for the events that are skipped.
        let uid = meta.uid.as_str();
        match ev.kind {
            EventType::Deleted => (self.present.remove(uid) || here).then_some(EventType::Deleted),
            kind if here => {
                if !self.present.contains(uid) {
                    self.present.insert(uid.to_string());
                }
                Some(kind)
            }
            _ => self.present.remove(uid).then_some(EventType::Deleted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::Pod;

    fn ev(kind: EventType, node: Option<&str>, app: &str) -> WatchEvent {
        let mut p = Pod {
            metadata: flotilla_api::ObjectMeta::named("default", "x"),
            ..Pod::default()
        };
        p.metadata.labels.insert("app".into(), app.into());
        p.spec.node_name = node.map(String::from);
        WatchEvent {
            revision: 1,
            kind,
            object: Object::Pod(p),
        }
    }

    #[test]
    fn objects_leaving_a_watch_are_delivered_as_deleted_once() {
        use EventType::*;
        let opts = ListOptions {
            kind: Some(flotilla_api::Kind::Pod),
            ..ListOptions::default()
        };
        let mut f = Filter::new(opts, Selector::parse("app=web").unwrap(), None);
        // (event, delivered as)
        let steps = [
            (ev(Added, None, "db"), None),
            (ev(Modified, None, "web"), Some(Modified)),
            (ev(Modified, None, "web"), Some(Modified)),
            (ev(Modified, None, "db"), Some(Deleted)),
            (ev(Modified, None, "db"), None),
            (ev(Deleted, None, "db"), None),
            (ev(Added, None, "web"), Some(Added)),
            (ev(Deleted, None, "web"), Some(Deleted)),
        ];
        for (i, (e, want)) in steps.into_iter().enumerate() {
            assert_eq!(f.admit(&e), want, "step {i}");
        }
    }

    #[test]
    fn a_node_sees_only_its_pods() {
        use EventType::*;
        let mut f = Filter::new(
            ListOptions::default(),
            Selector::default(),
            Some("n1".into()),
        );
        let steps = [
            (ev(Added, None, "a"), None),
            (ev(Modified, Some("n2"), "a"), None),
            (ev(Modified, Some("n1"), "a"), Some(Modified)),
            (ev(Deleted, Some("n1"), "a"), Some(Deleted)),
        ];
        for (i, (e, want)) in steps.into_iter().enumerate() {
            assert_eq!(f.admit(&e), want, "step {i}");
        }
    }
}
