//! Request paths: discovery documents and resource paths.

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    Version,
    CoreVersions,
    GroupList,
    Group(&'a str),
    ResourceList {
        group: &'a str,
        version: &'a str,
    },
    Resource(ResourcePath<'a>),
    OpenApiRoot,
    /// `api/v1` or `apis/{g}/{v}`.
    OpenApi(&'a str),
    Unknown,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ResourcePath<'a> {
    pub(crate) group: &'a str,
    pub(crate) version: &'a str,
    pub(crate) plural: &'a str,
    /// From a `/namespaces/{ns}/` prefix.
    pub(crate) namespace: Option<&'a str>,
    pub(crate) name: Option<&'a str>,
    pub(crate) status: bool,
}

pub(crate) fn parse(path: &str) -> Route<'_> {
    if let Some(rest) = path.strip_prefix("/openapi/v3") {
        return match rest.trim_start_matches('/') {
            "" => Route::OpenApiRoot,
            group_version => Route::OpenApi(group_version),
        };
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["version"] => Route::Version,
        ["api"] => Route::CoreVersions,
        ["api", version] => Route::ResourceList { group: "", version },
        ["api", version, rest @ ..] => resource("", version, rest),
        ["apis"] => Route::GroupList,
        ["apis", group] => Route::Group(group),
        ["apis", group, version] => Route::ResourceList { group, version },
        ["apis", group, version, rest @ ..] => resource(group, version, rest),
        _ => Route::Unknown,
    }
}

fn resource<'a>(group: &'a str, version: &'a str, rest: &[&'a str]) -> Route<'a> {
    let path = |namespace, plural, name, status| {
        Route::Resource(ResourcePath {
            group,
            version,
            plural,
            namespace,
            name,
            status,
        })
    };
    match rest {
        // `namespaces/{ns}/status` is the Namespace's own status, not a collection.
        ["namespaces", ns, plural] if *plural != "status" => path(Some(*ns), plural, None, false),
        ["namespaces", ns, plural, name] => path(Some(*ns), plural, Some(*name), false),
        ["namespaces", ns, plural, name, "status"] => path(Some(*ns), plural, Some(*name), true),
        [plural] => path(None, plural, None, false),
        [plural, name] => path(None, plural, Some(*name), false),
        [plural, name, "status"] => path(None, plural, Some(*name), true),
        _ => Route::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_paths() {
        let Route::Resource(p) =
            parse("/apis/gateway.networking.k8s.io/v1/namespaces/a/httproutes/r/status")
        else {
            panic!("not a resource path");
        };
        assert_eq!(
            (p.group, p.version, p.plural),
            ("gateway.networking.k8s.io", "v1", "httproutes")
        );
        assert_eq!(
            (p.namespace, p.name, p.status),
            (Some("a"), Some("r"), true)
        );
        let Route::Resource(p) = parse("/api/v1/namespaces/a") else {
            panic!("not a resource path");
        };
        assert_eq!(
            (p.plural, p.namespace, p.name),
            ("namespaces", None, Some("a"))
        );
        let Route::Resource(p) = parse("/api/v1/namespaces/a/status") else {
            panic!("not a resource path");
        };
        assert_eq!(
            (p.plural, p.name, p.status),
            ("namespaces", Some("a"), true)
        );
        assert_eq!(parse("/apis/x"), Route::Group("x"));
        assert_eq!(parse("/openapi/v2"), Route::Unknown);
    }
}
