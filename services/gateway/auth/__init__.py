"""Sign-in with OpenID Connect / Firebase ID tokens: verification, bearer access, CSRF and login limits."""
