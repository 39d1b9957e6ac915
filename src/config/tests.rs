use super::*;

const RULE: &str = "[[rule]]\nname = \"flood\"\ntable = \"ft_web\"\nall = [\"http_req_rate gt 100\"]\nweight = 100\n";
const MINIMAL: &str = "[[haproxy]]\nname = \"lb1\"\nsocket = \"unix:/run/haproxy/admin.sock\"\n\n[block]\nacl = \"/etc/haproxy/block.lst\"\n";

/// Loads `text` as `DIR/stickwarden.toml` with `rules` as `DIR/rules/r.toml`; errors with DIR.
fn load(text: &str, rules: &str) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/r.toml"), rules).unwrap();
    let path = dir.path().join("stickwarden.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).map_err(|e| e.to_string().replace(&dir.path().display().to_string(), "DIR"))
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = load(MINIMAL, RULE).unwrap();
    assert_eq!(c.targets[0].commands_per_second, DEFAULT_COMMANDS_PER_SECOND);
    assert_eq!(c.tables.len(), 1);
    assert_eq!((c.tables[0].name.as_str(), c.tables[0].interval), ("ft_web", DEFAULT_POLL_INTERVAL));
    // One watched table: tags go there, in gpt0, value 1.
    assert_eq!(c.block.table.as_deref(), Some("ft_web"));
    assert_eq!((c.block.tag.as_str(), c.block.tag_value), ("gpt0", 1));
    let s = &c.safety;
    assert_eq!((s.breaker_floor, s.breaker_share, s.max_blocks_per_minute), (100, 0.05, None));
    // With nothing configured, this host's loopback is still protected.
    let nets: Vec<String> = c.safety.never_block.iter().map(|p| crate::net::display(&p.net)).collect();
    assert_eq!(nets, ["127.0.0.1", "::1"]);
    assert_eq!((c.safety.max_prefix_v4, c.safety.max_prefix_v6), (16, 32));
    assert_eq!(c.store.cache_bytes, 16 << 20);
    assert_eq!(c.store.retention, Duration::from_secs(30 * 86_400));
    assert_eq!(c.rules.policy, crate::rules::Policy::default());
    assert!(!c.dry_run && c.aggregate.is_none() && c.allow.is_empty());
}

#[test]
fn merging_is_on_with_several_targets_unless_turned_off() {
    let one = load(MINIMAL, RULE).unwrap();
    assert!(!one.merge.enabled);
    let two = format!("{MINIMAL}[[haproxy]]\nname = \"lb2\"\nsocket = \"master:/run/m.sock\"\n");
    let c = load(&two, RULE).unwrap();
    assert!(c.merge.enabled);
    assert_eq!(c.targets[1].target, Target::Master("/run/m.sock".into()));
    let c = load(&format!("{two}[fleet]\nmerge = false\n[fleet.columns]\ngpt0 = \"sum\"\n"), RULE).unwrap();
    assert!(!c.merge.enabled);
    assert_eq!(c.merge.mode(&"gpt0".parse().unwrap()), crate::fleet::MergeMode::Sum);
}

#[test]
fn tcp_target_hosts_are_never_blocked() {
    let c = load(&MINIMAL.replace("unix:/run/haproxy/admin.sock", "tcp:192.0.2.80:9999"), RULE).unwrap();
    let nets: Vec<(String, &str)> =
        c.safety.never_block.iter().map(|p| (crate::net::display(&p.net), p.why.as_str())).collect();
    assert_eq!(
        nets,
        [
            ("127.0.0.1".into(), "this host's loopback"),
            ("::1".into(), "this host's loopback"),
            ("192.0.2.80".into(), "HAProxy target lb1")
        ]
    );
    // `localhost` protects both loopback addresses whatever /etc/hosts says.
    let c = load(&MINIMAL.replace("unix:/run/haproxy/admin.sock", "tcp:localhost:9999"), RULE).unwrap();
    for a in ["127.0.0.1", "::1"] {
        assert!(c.safety.never_block.iter().any(|p| p.net == crate::net::parse_net(a).unwrap()), "{a}");
    }
}

#[test]
fn blocks_broader_than_the_safety_limits_are_refused() {
    let c = load(
        &format!(
            "{MINIMAL}
[safety]
max_prefix_v4 = 20
"
        ),
        RULE,
    )
    .unwrap();
    let check = |s: &str, broad: bool| c.safety.check_breadth(&crate::net::parse_net(s).unwrap(), broad);
    assert!(check("10.0.16.0/20", false).is_ok());
    assert!(check("10.0.0.0/19", false).unwrap_err().contains("max_prefix_v4 = 20"));
    assert!(check("10.0.0.0/8", true).is_ok());
    assert!(check("2001:db8::/32", false).is_ok());
    assert!(check("2001:db8::/31", false).unwrap_err().contains("max_prefix_v6 = 32"));
    // IPv6 networks are measured by the IPv4 range they reach.
    assert!(check("::ffff:0:0/97", false).unwrap_err().contains("IPv4 /1"));
    for all in ["0.0.0.0/0", "::/0", "::/1", "::/64", "::/80", "::ffff:0:0/96"] {
        assert!(check(all, true).unwrap_err().contains("never allowed"), "{all}");
    }
    assert!(load(
        &format!(
            "{MINIMAL}
[safety]
max_prefix_v4 = 0
"
        ),
        RULE
    )
    .unwrap_err()
    .contains(":9:17: max_prefix_v4"));
    let agg = format!(
        "{MINIMAL}
[aggregate]
ipv4_prefix = 8
offenders = 3
window = \"1m\"
duration = \"1h\"
"
    );
    assert!(load(&agg, RULE)
        .unwrap_err()
        .contains(":9:15: ipv4_prefix /8 is broader than [safety] max_prefix_v4 = 16"));
}

#[test]
fn every_error_names_file_line_and_column() {
    let cases: &[(&str, &str)] = &[
        ("", "DIR/stickwarden.toml: no [[haproxy]] target"),
        ("[[haproxy]]\nname = \"a\"\nsocket = \"ftp:x\"\n", "DIR/stickwarden.toml:3:10: 'ftp:x': unknown scheme"),
        (
            &format!("{MINIMAL}[[haproxy]]\nname = \"lb1\"\nsocket = \"/x\"\n"),
            "DIR/stickwarden.toml:8:8: target 'lb1' is defined twice",
        ),
        (
            &format!("poll_interval = \"10ms\"\n{MINIMAL}"),
            "DIR/stickwarden.toml:1:17: poll_interval must be at least 100ms",
        ),
        (&format!("poll_interval = \"often\"\n{MINIMAL}"), "DIR/stickwarden.toml:1:17: 'often' is not a duration"),
        (
            &format!("{MINIMAL}[[table]]\nname = \"ft_api\"\ninterval = \"1s\"\n"),
            "DIR/stickwarden.toml:8:8: no rule reads table 'ft_api'",
        ),
        (&format!("{MINIMAL}tag = \"gpt-0\"\n"), "DIR/stickwarden.toml:7:7: 'gpt-0' is not a data column name"),
        (&format!("{MINIMAL}tag_value = 0\n"), "DIR/stickwarden.toml:7:13: tag_value must not be 0"),
        (&MINIMAL.replace("/etc/haproxy/block.lst", "#3"), "DIR/stickwarden.toml:6:7: expected the ACL file path"),
        (&MINIMAL.replace("acl = \"/etc/haproxy/block.lst\"\n", ""), "DIR/stickwarden.toml: the ladder uses \"acl\""),
        (
            &format!("{MINIMAL}\n[safety]\nnever_block = [\"10.0.0.1/8\"]\n"),
            "DIR/stickwarden.toml:9:15: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)",
        ),
        (
            &format!("{MINIMAL}\n[[allow]]\ncidr = \"10.0.0.0/8\"\nreason = \" \"\n"),
            "DIR/stickwarden.toml:10:10: an allowlist entry needs a reason",
        ),
        (
            &format!("{MINIMAL}\n[[allow]]\ncidr = \"10.0.0.0/8\"\nreason = \"x\"\nuntil = \"soon\"\n"),
            "DIR/stickwarden.toml:11:9: 'soon' is not an RFC 3339 time",
        ),
        (
            &format!("{MINIMAL}\n[aggregate]\noffenders = 1\nwindow = \"1m\"\nduration = \"1h\"\n"),
            "DIR/stickwarden.toml:9:13: offenders must be at least 2",
        ),
        (
            &format!("{MINIMAL}\n[fleet]\n[fleet.columns]\nhttp_req_rate = \"avg\"\n"),
            "DIR/stickwarden.toml:10:17: 'avg': expected \"sum\" or \"max\"",
        ),
        (&format!("{MINIMAL}\n[fleet]\nmerge = \"yes\"\n"), "DIR/stickwarden.toml:9:9: invalid type"),
        (
            &format!("{MINIMAL}\n[fleet.columns]\n\"http req\" = \"sum\"\n"),
            "DIR/stickwarden.toml:9:1: 'http req' is not a column name",
        ),
        (
            &format!("{MINIMAL}\n[store]\nretention = \"1h\"\n"),
            "DIR/stickwarden.toml: [store] retention (1h) is shorter than the ladder's forgiveness (1day)",
        ),
        (
            &format!("{MINIMAL}\n[store]\ncache_mb = 0\n"),
            "DIR/stickwarden.toml:9:12: cache_mb must be between 1 and 65536",
        ),
        (
            &format!("{MINIMAL}\n[safety]\nbreaker_share = 5\n"),
            "DIR/stickwarden.toml:9:17: breaker_share must be a fraction above 0 and at most 1",
        ),
        (
            &format!("{MINIMAL}\n[safety]\nbreaker_share = nan\n"),
            "DIR/stickwarden.toml:9:17: breaker_share must be a fraction above 0 and at most 1",
        ),
        (
            &format!("{MINIMAL}\n[safety]\nbreaker_floor = 0\n"),
            "DIR/stickwarden.toml:9:17: breaker_floor must be at least 1",
        ),
        (
            &format!("{MINIMAL}\n[[table]]\nname = \"ft_web\"\nsweep_interval = \"1m\"\n"),
            "DIR/stickwarden.toml:10:18: sweep_interval needs suspects",
        ),
        (
            &format!("{MINIMAL}\n[[table]]\nname = \"ft_web\"\nsuspects = \"ft_web\"\n"),
            "DIR/stickwarden.toml:10:12: suspects must name a table of its own, not 'ft_web'",
        ),
        (
            &format!("{MINIMAL}\n[[table]]\nname = \"ft_web\"\nsuspects = \"sw\"\nsweep_interval = \"10ms\"\n"),
            "DIR/stickwarden.toml:11:18: sweep_interval must be at least the table's poll interval",
        ),
        (&format!("{MINIMAL}colour = \"red\"\n"), "DIR/stickwarden.toml:7:1: unknown field `colour`"),
        ("[[haproxy]\n", "DIR/stickwarden.toml:1:10: invalid table header"),
        (
            &MINIMAL.replace("admin.sock\"\n", "admin.sock\"\ncommands_per_second = 0\n"),
            "DIR/stickwarden.toml:4:23: commands_per_second must be at least 1",
        ),
    ];
    let mut wrong = Vec::new();
    for (text, want) in cases {
        let got = load(text, RULE).unwrap_err();
        if !got.starts_with(want) {
            wrong.push(format!("\n{text}\n got: {got}\nwant: {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_suspects_table_only_for_rules_it_can_vouch_for() {
    let text = format!("{MINIMAL}\n[[table]]\nname = \"ft_web\"\nsuspects = \"sw_suspects\"\n");
    let c = load(&text, RULE).unwrap();
    let s = c.tables[0].suspects.as_ref().unwrap();
    assert_eq!((s.table.as_str(), s.sweep), ("sw_suspects", DEFAULT_SWEEP_INTERVAL));
    let bytes = RULE.replace("http_req_rate gt 100", "bytes_in_rate gt 100");
    let e = load(&text, &bytes).unwrap_err();
    assert!(
        e.starts_with("DIR/stickwarden.toml:10:12: table 'ft_web' cannot use a suspects table: rule 'flood' (DIR/rules/r.toml:2:8) reads bytes_in_rate"),
        "{e}"
    );
    let two = format!("{text}\n[[table]]\nname = \"ft_api\"\nsuspects = \"sw_suspects\"\n");
    let api_rule = RULE.replace("ft_web", "ft_api").replace("\"flood\"", "\"api\"");
    assert!(load(&two, &format!("{RULE}\n{api_rule}")).unwrap_err().contains("suspects must name a table of its own"));
    let tag = text.replace("[block]\n", "[block]\ntag = \"gpt1\"\n");
    assert!(load(&tag, RULE).unwrap_err().contains("needs [block] tag to be gpt0, gpc0 or gpc1 (not gpt1)"));
    let below = RULE.replace("http_req_rate gt 100", "http_req_rate lt 100");
    assert!(load(&text, &below).unwrap_err().contains("'http_req_rate lt 100' is not a lower bound"));
}

#[test]
fn rules_errors_come_first_with_their_own_file() {
    let got = load(MINIMAL, "[[rule]]\nname = \"x\"\n").unwrap_err();
    assert!(got.starts_with("DIR/rules/r.toml:1:1: missing field `table`"), "{got}");
    let dir = tempfile::tempdir().unwrap();
    let got = Config::load(&dir.path().join("nope.toml")).unwrap_err().to_string();
    assert!(got.contains("nope.toml: cannot read"), "{got}");
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    /// Pieces of real configuration and rules, shuffled and cut: the loaders answer with an
    /// error or a config, never a panic.
    const PIECES: &[&str] = &[
        "[[haproxy]]\n",
        "name = \"a\"\n",
        "socket = \"unix:/x\"\n",
        "socket = \"tcp:[::1]:1\"\n",
        "[block]\n",
        "acl = \"/a.lst\"\n",
        "tag = \"gpt0\"\n",
        "tag_value = 0\n",
        "[[rule]]\n",
        "table = \"t\"\n",
        "all = [\"gpt0 gt 0\"]\n",
        "any = [\"x >= -1\"]\n",
        "weight = 1e308\n",
        "weight = nan\n",
        "[ladder]\n",
        "forgiveness = \"1h\"\n",
        "steps = [{ action = [\"tag\"], duration = \"1s\" }]\n",
        "growth = 1e9\n",
        "[score]\n",
        "threshold = 1\n",
        "half_life = \"0s\"\n",
        "[[allow]]\n",
        "cidr = \"::/0\"\n",
        "reason = \"r\"\n",
        "[aggregate]\n",
        "offenders = 2\n",
        "window = \"1s\"\n",
        "duration = \"99999999999999d\"\n",
        "ipv6_prefix = 200\n",
        "[api]\n",
        "tokens = \"t.toml\"\n",
        "listen = []\n",
        "= \n",
        "[\n",
        "\"\n",
        "\u{0}\n",
        "é\n",
    ];

    proptest! {
        #[test]
        fn config_and_rules_loaders_never_panic(
            cfg in proptest::collection::vec(0..PIECES.len(), 0..24),
            rules in proptest::collection::vec(0..PIECES.len(), 0..24),
            cut in 0usize..400,
        ) {
            let text: String = cfg.iter().map(|&i| PIECES[i]).collect();
            let mut rules: String = rules.iter().map(|&i| PIECES[i]).collect();
            rules.truncate(rules.char_indices().map(|(i, _)| i).nth(cut).unwrap_or(rules.len()));
            let _ = load(&text, &rules);
        }

        #[test]
        fn conditions_never_panic(s in "\\\\PC{0,40}") {
            let _ = s.parse::<crate::rules::Condition>();
            let _ = crate::net::parse_net(&s);
            let _ = crate::ops::parse_duration(&s);
        }
    }
}

/// `[store] backend = "postgres"`: the URL is checked where it is written, never holds a
/// password, and the keys of one backend are refused on the other.
#[test]
fn the_postgres_backend_is_checked_where_it_is_written() {
    let store = |lines: &str| format!("{MINIMAL}\n[store]\n{lines}\n");
    let c = load(
        &store("backend = \"postgres\"\nurl = \"postgres://sw@db1:5433/sw\"\nname = \"ctl-a\"\npassword_file = \"pw\""),
        RULE,
    )
    .unwrap();
    let BackendConfig::Postgres(pg) = &c.store.backend else { panic!("{:?}", c.store.backend) };
    assert_eq!((pg.url.as_str(), pg.name.as_str()), ("postgres://sw@db1:5433/sw", "ctl-a"));
    assert!(pg.password_file.as_ref().unwrap().ends_with("pw"), "relative to the config: {:?}", pg.password_file);
    assert_eq!(load(MINIMAL, RULE).unwrap().store.backend, BackendConfig::Sled);
    let cases: &[(&str, &str)] = &[
        ("backend = \"postgres\"", "DIR/stickwarden.toml:9:11: backend = \"postgres\" needs url"),
        (
            "backend = \"postgres\"\nurl = \"postgres://sw:secret@db1/sw\"",
            "DIR/stickwarden.toml:10:7: the URL holds a password: put it in password_file or STICKWARDEN_PG_PASSWORD",
        ),
        ("backend = \"postgres\"\nurl = \"postgres://sw@db1\"", "DIR/stickwarden.toml:10:7: the URL names no database"),
        (
            "backend = \"postgres\"\nurl = \"mysql://x\"",
            "DIR/stickwarden.toml:10:7: not a PostgreSQL connection string",
        ),
        (
            "backend = \"postgres\"\nurl = \"postgres://sw@db1/sw\"\nname = \"a b\"",
            "DIR/stickwarden.toml:11:8: name: 1 to 64 letters",
        ),
        ("url = \"postgres://sw@db1/sw\"", "DIR/stickwarden.toml:9:7: url is only for backend = \"postgres\""),
        ("backend = \"mongo\"", "DIR/stickwarden.toml:9:11: backend 'mongo': expected \"sled\" or \"postgres\""),
    ];
    for (lines, want) in cases {
        let e = load(&store(lines), RULE).unwrap_err();
        assert!(e.starts_with(want), "{lines}:\n got {e}\nwant {want}");
    }
}
