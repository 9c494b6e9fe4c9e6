"""Stand-in for ComfyUI's folder_paths, rooted at a temporary folder a test sets."""

import os

models_dir = os.environ.get("STANDIN_MODELS_DIR", "/tmp/instructbooth-standin/models")
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}


def reset(root: str) -> None:
    global models_dir
    models_dir = os.path.join(root, "models")
    folder_names_and_paths.clear()
    for name in ("checkpoints", "loras"):
        folder_names_and_paths[name] = ([os.path.join(models_dir, name)], {".safetensors", ".ckpt", ".pt"})
        os.makedirs(os.path.join(models_dir, name), exist_ok=True)
    os.makedirs(get_output_directory(), exist_ok=True)


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    paths, _ = folder_names_and_paths.setdefault(folder_name, ([], set()))  # a new folder lists every file
    if full_folder_path not in paths:
        paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)


def get_folder_paths(folder_name):
    if folder_name not in folder_names_and_paths:
        raise KeyError(folder_name)
    return list(folder_names_and_paths[folder_name][0])


def get_filename_list(folder_name):
    _, extensions = folder_names_and_paths[folder_name]
    names = []
    for folder in get_folder_paths(folder_name):
        if os.path.isdir(folder):
            for root, _, files in os.walk(folder):
                names += [os.path.relpath(os.path.join(root, f), folder) for f in files]
    return sorted(n for n in names if not extensions or os.path.splitext(n)[1].lower() in extensions)


def get_full_path(folder_name, filename):
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")  # ComfyUI drops leading ".." the same way
    for folder in get_folder_paths(folder_name):
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
    return None


def get_full_path_or_raise(folder_name, filename):
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def get_output_directory():
    return os.path.join(os.path.dirname(models_dir), "output")


def get_temp_directory():
    return os.path.join(os.path.dirname(models_dir), "temp")
