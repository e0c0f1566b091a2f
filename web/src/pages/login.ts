import { errorText, login, setSession } from '../api';
import type { Page } from '../main';
import { navigate } from '../nav';
import { h } from '../ui';

export const loginPage: Page = (ctx) => {
  ctx.title('Sign in');
  const error = h('div', { class: 'alert alert-error', role: 'alert', id: 'login-error', hidden: true });
  const notice = ctx.query.get('expired')
    ? h('div', { class: 'alert alert-info', role: 'status' }, 'Your session ended. Sign in again.')
    : null;
  const username = h('input', {
    id: 'username',
    name: 'username',
    type: 'text',
    autocomplete: 'username',
    autocapitalize: 'none',
    spellcheck: 'false',
    required: true,
  });
  const password = h('input', {
    id: 'password',
    name: 'password',
    type: 'password',
    autocomplete: 'current-password',
    required: true,
  });
  const submit = h('button', { class: 'btn btn-primary btn-block', type: 'submit', id: 'login-submit' }, 'Sign in');
  const showError = (msg: string) => {
    error.textContent = msg;
    error.hidden = false;
  };
  const form = h(
    'form',
    {
      class: 'login-form',
      novalidate: true,
      onsubmit: async (ev: Event) => {
        ev.preventDefault();
        error.hidden = true;
        const u = username.value.trim();
        if (!u || !password.value) {
          showError('Enter your username and password.');
          return;
        }
        submit.disabled = true;
        submit.textContent = 'Signing in…';
        try {
          const r = await login(u, password.value);
          if (!('key' in r)) {
            // The second step (TOTP or a security key) is not in the console yet.
            showError('This account signs in with a second factor: use `alpacon login` for now.');
            return;
          }
          setSession(r.key, r.user.username);
          const next = ctx.query.get('next');
          navigate(next && next.startsWith('#/') && !next.startsWith('#/login') ? next : '#/servers', true);
        } catch (e) {
          showError(errorText(e));
          password.select();
        } finally {
          submit.disabled = false;
          submit.textContent = 'Sign in';
        }
      },
    },
    h('label', { for: 'username' }, 'Username'),
    username,
    h('label', { for: 'password' }, 'Password'),
    password,
    error,
    submit,
  );
  ctx.main.classList.add('main-center');
  ctx.main.append(
    h(
      'section',
      { class: 'card login-card', 'aria-labelledby': 'login-title' },
      h('div', { class: 'login-brand' }, h('span', { class: 'brand-mark brand-mark-lg' }, '>_'), h('h1', { id: 'login-title' }, 'Alpacon')),
      h('p', { class: 'muted' }, 'Sign in to the access gateway.'),
      notice,
      form,
    ),
  );
  username.focus();
};
