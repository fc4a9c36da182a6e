// Segmind's published IC-Light example (segmind.com/models/ic-light/api, JavaScript tab)
// as it stands: reqBody with a URL subject_image, appended field by field to form-data,
// no responseType. Only the URL, the key and the image URL come from the command line,
// and the answer is printed as a line of JSON for the test instead of logged raw.
const axios = require('axios');
const FormData = require('form-data');

const [url, api_key, subjectImage] = process.argv.slice(2);

const reqBody = {
  "cfg": 2,
  "seed": 42,
  "steps": 25,
  "width": 512,
  "height": 640,
  "prompt": "cat, photoshoot, 4k",
  "light_source": "None",
  "highres_scale": 1.5,
  "output_format": "webp",
  "subject_image": subjectImage,
  "lowres_denoise": 0.9,
  "output_quality": 80,
  "appended_prompt": "best quality",
  "highres_denoise": 0.5,
  "negative_prompt": "lowres, bad anatomy, bad hands, cropped, worst quality",
  "number_of_images": 1
};

(async function() {
  try {
    const formData = new FormData();
    // Append regular fields
    for (const key in reqBody) {
      if (reqBody.hasOwnProperty(key)) {
        formData.append(key, reqBody[key]);
      }
    }
    const response = await axios.post(url, formData, {
      headers: {
        'x-api-key': api_key,
        ...formData.getHeaders()
      }
    });
    console.log(JSON.stringify({
      status: response.status,
      contentType: response.headers['content-type'],
      remainingCredits: response.headers['x-remaining-credits'],
      riff: typeof response.data === 'string' && response.data.startsWith('RIFF'),
    }));
  } catch (error) {
    console.error('Error:', error.response ? error.response.data : error.message);
    process.exit(1);
  }
})();
