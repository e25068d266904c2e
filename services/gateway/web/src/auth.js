// Sign-in: the dev form under AUTH_MODE=dev, Google through the Firebase JS SDK under firebase
// (configured by GET /auth/config, loaded only then), and sign-out. Both post to /auth/login,
// which sets the session cookie.
import { api } from "./api.js";

export async function devSignIn(email, name, groups = []) {
  return api("/auth/login", { method: "POST", body: groups.length ? { email, name, groups } : { email, name } });
}

export async function googleSignIn(firebaseConfig) {
  const [{ initializeApp, getApps }, { getAuth, GoogleAuthProvider, signInWithPopup, signOut }] = await Promise.all([
    import("firebase/app"),
    import("firebase/auth"),
  ]);
  const app = getApps()[0] || initializeApp(firebaseConfig);
  const auth = getAuth(app);
  const credential = await signInWithPopup(auth, new GoogleAuthProvider());
  const idToken = await credential.user.getIdToken();
  try {
    return await api("/auth/login", { method: "POST", body: { idToken } });
  } finally {
    // The gateway's session cookie is what signs the page in from now on, not Firebase's state.
    await signOut(auth);
  }
}

export async function signOutOfGateway() {
  await api("/auth/logout", { method: "POST" });
}
