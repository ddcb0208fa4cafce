from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from chat import attachment_views, export_views, reports, sidebar_views, themes, views
from chat.models import UsageDay

# The usage report is the UsageDay changelist, kept at the address the docs give.
usage_report = admin.site.admin_view(admin.site.get_model_admin(UsageDay).changelist_view)

urlpatterns = [
    path("", views.index, name="index"),
    path("c/<int:conversation_id>/", views.conversation, name="conversation"),
    path("c/<int:conversation_id>/messages/", views.conversation_messages, name="messages"),
    path("c/<int:conversation_id>/rename/", views.rename, name="rename_conversation"),
    path("c/<int:conversation_id>/delete/", views.delete, name="delete_conversation"),
    path("c/<int:conversation_id>/settings/", views.save_settings, name="conversation_settings"),
    path("attachments/", attachment_views.upload, name="attachments"),
    path("attachments/<int:attachment_id>/", attachment_views.image, name="attachment"),
    path(
        "attachments/<int:attachment_id>/thumb/",
        attachment_views.thumbnail,
        name="attachment_thumbnail",
    ),
    path(
        "attachments/<int:attachment_id>/delete/",
        attachment_views.remove,
        name="attachment_delete",
    ),
    path("settings/", views.user_settings, name="settings"),
    path("settings/password/", views.PasswordChangeView.as_view(), name="password_change"),
    path("setup/", views.setup, name="setup"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("usage/", reports.my_usage, name="usage"),
    path("admin/usage/", usage_report, name="admin_usage"),
    path("admin/usage/user/<int:user_id>/", reports.user_usage, name="admin_usage_user"),
    path("admin/", admin.site.urls),
    path("settings/theme/", themes.save_theme, name="save_theme"),
    path("c/<int:conversation_id>/export.md", export_views.export_markdown, name="export_markdown"),
    path("c/<int:conversation_id>/export.json", export_views.export_json, name="export_json"),
    path("export/", export_views.export_all, name="export_all"),
    path("import/", export_views.import_view, name="import"),
    path("conversations/", sidebar_views.conversation_page, name="conversation_page"),
    path("conversations/search/", sidebar_views.search, name="search_conversations"),
]
