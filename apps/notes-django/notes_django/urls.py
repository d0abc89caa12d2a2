from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("notes", views.create_from_form),
    path("notes/<str:note_id>/delete", views.delete_from_form),
    path("api/notes", views.api_notes),
    path("api/notes/<str:note_id>", views.api_note),
    path("healthz", views.healthz),
]
