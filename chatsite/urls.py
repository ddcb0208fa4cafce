from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from chat import views

urlpatterns = [
    path("", views.index, name="index"),
    path("c/<int:conversation_id>/", views.conversation, name="conversation"),
    path("c/<int:conversation_id>/rename/", views.rename, name="rename_conversation"),
    path("c/<int:conversation_id>/delete/", views.delete, name="delete_conversation"),
    path("setup/", views.setup, name="setup"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/usage/", views.usage_report, name="admin_usage"),
    path("admin/", admin.site.urls),
]
