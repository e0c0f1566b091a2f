// The work-session policy: who needs a session to reach servers. Everyone
// may read it; staff and superusers change it (the gateway may ask for a
// recent second factor: its detail is shown as is).

import { errorText, getWorkPolicy, isAdmin, putWorkPolicy, whoami, type WorkPolicy } from '../api';
import type { Page } from '../main';
import { h } from '../ui';
import { policyText } from '../worksession';

const REQUIRED: { value: WorkPolicy['required_for']; label: string }[] = [
  { value: 'nobody', label: 'Nobody (sessions are optional)' },
  { value: 'members', label: 'Members (not staff or superusers)' },
  { value: 'everyone', label: 'Everyone' },
];

export const workPolicyPage: Page = (ctx) => {
  ctx.title('Work-session policy');
  const error = h('div', { class: 'alert alert-error', role: 'alert', id: 'policy-error', hidden: true });
  const saved = h('div', { class: 'alert alert-info', role: 'status', id: 'policy-saved', hidden: true });
  const summary = h('p', { class: 'muted', id: 'policy-summary' }, 'Loading…');
  const requiredFor = h(
    'select',
    { id: 'policy-required-for' },
    REQUIRED.map((r) => h('option', { value: r.value }, r.label)),
  );
  const groups = h('input', {
    id: 'policy-groups',
    type: 'text',
    placeholder: 'e.g. production, payments',
    autocomplete: 'off',
    spellcheck: 'false',
    'aria-describedby': 'policy-groups-help',
  });
  const autoApprove = h('input', { id: 'policy-auto-approve', type: 'checkbox' });
  const maxHours = h('input', { id: 'policy-max-hours', type: 'number', min: 1, max: 720, step: 1, required: true });
  const save = h('button', { class: 'btn btn-primary', type: 'submit', id: 'policy-save' }, 'Save policy');
  const form = h(
    'form',
    { class: 'card ws-form', id: 'ws-policy', novalidate: true, hidden: true },
    h('h2', {}, 'Change the policy'),
    h('label', { for: 'policy-required-for' }, 'Who needs a work session to reach a server'),
    requiredFor,
    h('label', { for: 'policy-groups' }, 'Server groups that always need one'),
    groups,
    h('p', { class: 'muted small', id: 'policy-groups-help' }, 'Comma-separated group names: servers in these groups need a session from everyone, admins included.'),
    h('label', { class: 'check', for: 'policy-auto-approve' }, autoApprove, h('span', {}, 'Approve superusers’ own requests at once')),
    h('label', { for: 'policy-max-hours' }, 'Longest session (hours)'),
    maxHours,
    h('div', { class: 'form-actions' }, save),
  );
  ctx.main.append(
    h('div', { class: 'page-head' }, h('a', { class: 'back', href: '#/work-sessions', 'aria-label': 'Back to work sessions' }, '←'), h('h1', {}, 'Work-session policy')),
    summary,
    error,
    saved,
    form,
  );

  const fill = (p: WorkPolicy) => {
    summary.textContent = policyText(p);
    requiredFor.value = p.required_for;
    groups.value = p.required_groups.join(', ');
    autoApprove.checked = p.auto_approve_superusers;
    maxHours.value = String(p.max_duration_hours);
  };
  const fail = (e: unknown) => {
    saved.hidden = true;
    error.textContent = errorText(e);
    error.hidden = false;
  };

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    saved.hidden = true;
    const hours = Number(maxHours.value);
    if (!Number.isInteger(hours) || hours < 1 || hours > 720) return fail('The longest session is 1 to 720 hours.');
    const p: WorkPolicy = {
      required_for: requiredFor.value as WorkPolicy['required_for'],
      required_groups: groups.value.split(',').map((g) => g.trim()).filter(Boolean),
      auto_approve_superusers: autoApprove.checked,
      max_duration_hours: hours,
    };
    save.disabled = true;
    try {
      fill(await putWorkPolicy(p));
      saved.textContent = 'Saved.';
      saved.hidden = false;
    } catch (e) {
      fail(e);
    } finally {
      save.disabled = false;
    }
  });

  let stopped = false;
  Promise.all([getWorkPolicy(), whoami().catch(() => null)])
    .then(([p, w]) => {
      if (stopped) return;
      fill(p);
      form.hidden = !(w && isAdmin(w));
    })
    .catch((e) => {
      if (!stopped) {
        summary.textContent = '';
        fail(e);
      }
    });
  return () => {
    stopped = true;
  };
};
