/** Goes to a hash route; `replace` rewrites the current history entry. */
export function navigate(hash: string, replace = false): void {
  if (replace) {
    history.replaceState(null, '', hash);
    window.dispatchEvent(new Event('hashchange'));
  } else if (location.hash === hash) {
    window.dispatchEvent(new Event('hashchange'));
  } else {
    location.hash = hash;
  }
}

/** Changes the address bar without rendering again. */
export function setHashQuietly(hash: string): void {
  history.replaceState(null, '', hash);
}
