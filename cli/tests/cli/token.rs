use crate::helpers::{SECRET, mangahub, output, start_dev, stdout};

async fn mint(secret: &str, user: &str) -> String {
    let out = output(mangahub().args([
        "token",
        "--user",
        user,
        "--username",
        "Tok",
        "--jwt-secret",
        secret,
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    stdout(&out).trim().to_owned()
}

#[tokio::test]
async fn tokens_from_the_shared_secret_are_accepted_and_others_are_not() {
    let dev = start_dev().await;
    let good = mint(SECRET, "toki").await;
    let out = output(mangahub().args([
        "client",
        "--addr",
        &dev.gateway,
        "--token",
        &good,
        "update",
        "--manga",
        "5",
        "--chapter",
        "2",
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).starts_with("saved: manga 5: chapter 2"),
        "{}",
        stdout(&out)
    );

    let forged = mint("some-other-secret", "toki").await;
    let out = output(mangahub().args([
        "client",
        "--addr",
        &dev.gateway,
        "--token",
        &forged,
        "get",
        "--manga",
        "5",
    ]))
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("authentication failed: invalid token"),
        "{err}"
    );
    assert!(dev.interrupt().await.success());
}
